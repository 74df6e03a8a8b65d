// Types a text into the playground page in headless Chromium and prints what the page shows, as JSON.
//
//   node drive.js --url http://127.0.0.1:8501/ --chromium /usr/bin/chromium --text-file article.txt \
//       [--target "label stable"] [--screenshot page.png]
//
// Used by tests/serving/test_playground.py; needs `npm install` here (playwright-core only:
// it drives the system's Chromium and downloads no browser).
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { chromium } = require("playwright-core");

// The machine's network is closed: without these Chromium's own background connections fail.
const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const TIMEOUT_MS = 30000;

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 2) {
    if (!argv[i].startsWith("--") || argv[i + 1] === undefined) {
      throw new Error(`expected --name value pairs, got ${argv.slice(i).join(" ")}`);
    }
    args[argv[i].slice(2)] = argv[i + 1];
  }
  for (const required of ["url", "chromium", "text-file"]) {
    if (!args[required]) throw new Error(`missing --${required}`);
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "playground-profile-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: args.chromium,
    headless: true,
    args: CHROMIUM_FLAGS,
  });
  const consoleErrors = [];
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(TIMEOUT_MS);
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    await page.goto(args.url);
    await page.waitForSelector("#predict:not([disabled])");
    if (args.target) {
      await page.selectOption("#target", { label: args.target });
      await page.waitForSelector("#predict:not([disabled])");
    }
    // Typed, as a person would: the page reads what is in the text box.
    await page.click("#text");
    await page.keyboard.insertText(fs.readFileSync(args["text-file"], "utf8"));
    await page.click("#predict");
    await page.waitForSelector("body[data-predictions='1']");
    const shown = await page.evaluate(() => ({
      label: document.getElementById("label").textContent,
      score: document.getElementById("score").textContent,
      bars: [...document.querySelectorAll("#bars .bar")].map((bar) => ({
        label: bar.dataset.label,
        value: Number(bar.querySelector(".value").textContent),
        top: bar.classList.contains("top"),
      })),
      curl: document.getElementById("curl").textContent,
      response: document.getElementById("response").textContent,
      versions: document.getElementById("versions").textContent,
      labels: document.getElementById("labels").textContent,
      answering: document.getElementById("answering").textContent,
      error: document.getElementById("error").hidden ? "" : document.getElementById("error").textContent,
    }));
    if (args.screenshot) await page.screenshot({ path: args.screenshot, fullPage: true });
    process.stdout.write(JSON.stringify({ ...shown, consoleErrors }) + "\n");
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((error) => {
  process.stderr.write(`playground driver: ${error.stack || error}\n`);
  process.exit(1);
});
