"""The playground page (--rest_api_playground) in headless Chromium, on the BBC News model.

The driver (tests/serving/playground/drive.js, playwright-core) opens the page
from a real server, types a real test-split article and reads back what the page
shows; the test compares it with the server's own REST answer and runs the curl
command the page printed. Skipped, with the reason, where Chromium, Node.js or
the driver's npm packages are missing (.ci/run installs all three).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.serving.conftest import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

DRIVER_DIR = Path(__file__).resolve().parent / "playground"
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
BBC_LABELS = {"business", "entertainment", "politics", "sport", "tech"}


def _chromium() -> str:
    found = next((c for c in CHROMIUM_CANDIDATES if Path(c).is_file()), None)
    if found is None:
        pytest.skip("Chromium not found at /usr/bin/chromium: apt-get install -y chromium (.ci/run does)")
    if shutil.which("node") is None:
        pytest.skip("Node.js not found: apt-get install -y nodejs npm (.ci/run does)")
    version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"playwright-core needs Node.js 20 or newer; this machine has {version}")
    if not (DRIVER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip(f"playwright-core not installed: run npm install in {DRIVER_DIR} (.ci/run does)")
    return found


@pytest.fixture(scope="module")
def served(bbc_run, tmp_path_factory):
    export = bbc_run.version_dir.parent.resolve()
    config = tmp_path_factory.mktemp("playground") / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "bbc_news" base_path: "{export}" model_platform: "tensorflow" '
        'version_labels { key: "stable" value: 1 } } }\n'
    )
    args = [
        f"--model_config_file={config}",
        "--allow_version_labels_for_unavailable_models",
        "--rest_api_playground",
    ]
    with running_server(args) as server:
        yield server


@pytest.fixture(scope="module")
def article(bbc_run, bbc_path) -> tuple[str, str]:
    """A sport article from the run's test split, and its label."""
    from pipeline.data import DataConfig, ingest

    splits = json.loads((bbc_run.run_dir / "splits.json").read_text())
    data = ingest(bbc_path, DataConfig()).subset(splits["test"])
    index = data.labels.index("sport")
    return data.texts[index], data.labels[index]


def _rest_predict(server, text: str, target: str = "") -> dict:
    body = json.dumps({"instances": [text]}).encode()
    url = f"{server.rest_url}/v1/models/bbc_news{target}:predict"
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as response:
        return json.loads(response.read())["predictions"][0]


def _drive(server, text: str, tmp_path: Path, target: str | None = None) -> dict:
    chromium = _chromium()
    text_file = tmp_path / "article.txt"
    text_file.write_text(text, "utf-8")
    command = ["node", str(DRIVER_DIR / "drive.js"), "--url", f"{server.rest_url}/", "--chromium", chromium]
    command += ["--text-file", str(text_file), "--screenshot", str(tmp_path / "page.png")]
    if target:
        command += ["--target", target]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=DRIVER_DIR)
    assert done.returncode == 0, f"driver failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def test_typed_article_shows_the_models_label_and_probabilities(served, article, tmp_path):
    text, true_label = article
    expected = _rest_predict(served, text)
    shown = _drive(served, text, tmp_path)

    assert shown["error"] == "" and shown["consoleErrors"] == []
    assert shown["label"] == expected["label"] == true_label
    assert shown["score"] == f"(score {expected['score']:.3f})"
    # One bar per class, named from the classify signature, in the probabilities' order.
    assert {bar["label"] for bar in shown["bars"]} == BBC_LABELS
    assert [bar["value"] for bar in shown["bars"]] == pytest.approx(expected["probabilities"], abs=5e-4)
    assert [bar["label"] for bar in shown["bars"] if bar["top"]] == [true_label]
    assert shown["versions"] == "1 (AVAILABLE)"
    assert shown["labels"] == "stable → 1"
    assert shown["answering"].startswith("version 1")
    assert (tmp_path / "page.png").stat().st_size > 0


def test_the_curl_command_shown_gives_the_same_answer(served, article, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl not found")
    text, _ = article
    shown = _drive(served, text[:400], tmp_path)
    command = shlex.split(shown["curl"])
    assert command[0] == "curl" and f"{served.rest_url}/v1/models/bbc_news:predict" in command
    done = subprocess.run([*command, "--silent", "--show-error"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(shown["response"])


def test_a_label_can_be_chosen_as_the_version(served, article, tmp_path):
    text, _ = article
    shown = _drive(served, text[:400], tmp_path, target="label stable")
    assert "/v1/models/bbc_news/labels/stable:predict" in shown["curl"]
    assert shown["label"] == _rest_predict(served, text[:400], "/labels/stable")["label"]


def test_page_loads_nothing_from_outside_the_server(served):
    for path in ("/", "/playground/playground.js", "/playground/playground.css"):
        with urllib.request.urlopen(f"{served.rest_url}{path}", timeout=30) as response:
            body = response.read().decode("utf-8")
            assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert not re.search(r"https?://", body), path
