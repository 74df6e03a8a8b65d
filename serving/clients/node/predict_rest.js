#!/usr/bin/env node
// Classifies texts through TF Serving's REST API with Node's built-in fetch (Node >= 18).
//
//   node predict_rest.js --url http://localhost:8501 --model bbc_news "Shares rose after the merger"
//
// Sends {"instances": [text, ...]} to POST /v1/models/{model}:predict and prints
// {"predictions": [{label, score, class_id, probabilities}, ...]}, the server's
// answer as it came. On failure prints "HTTP status: message" to stderr and exits 1.
'use strict';

const { parseArgs } = require('node:util');

async function main() {
  const { values: opts, positionals: texts } = parseArgs({
    allowPositionals: true,
    options: {
      url: { type: 'string', default: process.env.TFS_REST_URL || 'http://localhost:8501' },
      model: { type: 'string', default: process.env.MODEL_NAME || 'bbc_news' },
      'timeout-ms': { type: 'string', default: '10000' },
      help: { type: 'boolean', default: false },
    },
  });
  if (opts.help || texts.length === 0) {
    console.error('usage: node predict_rest.js [--url http://HOST:PORT] [--model NAME] [--timeout-ms N] TEXT...');
    return opts.help ? 0 : 2;
  }
  const endpoint = `${opts.url.replace(/\/+$/, '')}/v1/models/${encodeURIComponent(opts.model)}:predict`;
  const response = await fetch(endpoint, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ instances: texts }),
    signal: AbortSignal.timeout(Number(opts['timeout-ms'])),
  });
  const body = await response.text();
  if (!response.ok) {
    // TF Serving answers every error as {"error": "..."}.
    let message = body;
    try { message = JSON.parse(body).error; } catch { /* not JSON: show it as it came */ }
    console.error(`HTTP ${response.status}: ${message}`);
    return 1;
  }
  console.log(body);
  return 0;
}

main().then((code) => { process.exitCode = code; }, (error) => {
  console.error(`ERROR: ${error.cause ? `${error.message} (${error.cause.message})` : error.message}`);
  process.exitCode = 1;
});
