#!/usr/bin/env node
// Classifies texts through TF Serving's gRPC PredictionService/Predict.
//
//   npm install && PYTHON=/path/to/venv/bin/python npm run protos   # once
//   node predict.js --target localhost:8500 --model bbc_news "Shares rose after the merger"
//
// Works against `textserve serve` and against tensorflow_model_server alike.
// TF Serving's messages and services come from tfs_protos.json, which
// `npm run protos` writes (protobuf.js's JSON form) from the descriptors compiled
// into the installed tensorflow-serving-api wheel, so no .proto file of TF
// Serving or TensorFlow is kept here.
//
// Prints one JSON document: {"model_spec": {...}, "predictions": [{label, score,
// class_id, probabilities}, ...]}. On failure prints "CODE: message" to stderr
// and exits 1.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTOS = path.join(__dirname, 'tfs_protos.json');
// TF Serving accepts messages up to 2 GiB; lift grpc-js's 4 MB receive limit to match.
const UNLIMITED = -1;

function usage() {
  return 'usage: node predict.js [--target HOST:PORT] [--model NAME] [--signature NAME]\n' +
    '                         [--timeout-ms N] [--protos FILE] TEXT...\n' +
    'defaults: --target $TFS_GRPC_TARGET or localhost:8500, --model $MODEL_NAME or bbc_news';
}

function loadPredictionService(protosFile) {
  if (!fs.existsSync(protosFile)) {
    throw new Error(`${protosFile} is missing: run \`PYTHON=<python with tensorflow-serving-api> ` +
      'npm run protos` in this folder first');
  }
  const definition = protoLoader.fromJSON(JSON.parse(fs.readFileSync(protosFile, 'utf8')), {
    keepCase: true, // TF Serving's field names (model_spec, string_val), as in its docs
    longs: String, // int64 fields (versions, class ids, dim sizes) without precision loss
    enums: String, // DT_STRING, not 7
    defaults: false,
  });
  return grpc.loadPackageDefinition(definition).tensorflow.serving.PredictionService;
}

// A TensorProto's values as a flat array, from its typed field or from tensor_content.
function tensorValues(tensor) {
  const content = tensor.tensor_content;
  switch (tensor.dtype) {
    case 'DT_STRING':
      return (tensor.string_val || []).map((bytes) => bytes.toString('utf8'));
    case 'DT_FLOAT':
      return content && content.length
        ? Array.from(new Float32Array(content.buffer.slice(content.byteOffset, content.byteOffset + content.length)))
        : tensor.float_val || [];
    case 'DT_INT64':
      return content && content.length
        ? Array.from(new BigInt64Array(content.buffer.slice(content.byteOffset, content.byteOffset + content.length)), Number)
        : (tensor.int64_val || []).map(Number);
    default:
      throw new Error(`output dtype ${tensor.dtype} is not decoded by this example`);
  }
}

// Splits a [batch, ...] tensor into one entry per batch item.
function rows(tensor) {
  const dims = ((tensor.tensor_shape || {}).dim || []).map((d) => Number(d.size));
  const values = tensorValues(tensor);
  const batch = dims.length ? dims[0] : 1;
  const width = values.length / batch;
  return Array.from({ length: batch }, (_, i) =>
    dims.length > 1 ? values.slice(i * width, (i + 1) * width) : values[i]);
}

function predict(client, request, timeoutMs) {
  return new Promise((resolve, reject) => {
    client.Predict(request, { deadline: Date.now() + timeoutMs }, (error, response) =>
      (error ? reject(error) : resolve(response)));
  });
}

async function main() {
  const { values: opts, positionals: texts } = parseArgs({
    allowPositionals: true,
    options: {
      target: { type: 'string', default: process.env.TFS_GRPC_TARGET || 'localhost:8500' },
      model: { type: 'string', default: process.env.MODEL_NAME || 'bbc_news' },
      signature: { type: 'string', default: 'serving_default' },
      'timeout-ms': { type: 'string', default: '10000' },
      protos: { type: 'string', default: DEFAULT_PROTOS },
      help: { type: 'boolean', default: false },
    },
  });
  if (opts.help || texts.length === 0) {
    console.error(usage());
    return opts.help ? 0 : 2;
  }
  const PredictionService = loadPredictionService(opts.protos);
  const client = new PredictionService(opts.target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': UNLIMITED,
    'grpc.max_send_message_length': UNLIMITED,
  });
  const request = {
    model_spec: { name: opts.model, signature_name: opts.signature },
    inputs: {
      text: {
        dtype: 'DT_STRING',
        tensor_shape: { dim: [{ size: texts.length }] },
        string_val: texts.map((t) => Buffer.from(t, 'utf8')),
      },
    },
  };
  try {
    const response = await predict(client, request, Number(opts['timeout-ms']));
    const out = response.outputs;
    const labels = rows(out.label);
    const scores = rows(out.score);
    const classIds = rows(out.class_id);
    const probabilities = rows(out.probabilities);
    const predictions = labels.map((label, i) => ({
      label, score: scores[i], class_id: classIds[i], probabilities: probabilities[i],
    }));
    const spec = response.model_spec;
    console.log(JSON.stringify({
      model_spec: { name: spec.name, version: spec.version ? spec.version.value : null, signature_name: spec.signature_name },
      predictions,
    }));
    return 0;
  } catch (error) {
    // grpc-js errors carry the status code and the server's message (`details`).
    const code = error.code !== undefined ? grpc.status[error.code] : 'ERROR';
    console.error(`${code}: ${error.details || error.message}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => { process.exitCode = code; }, (error) => {
  console.error(`ERROR: ${error.message}`);
  process.exitCode = 1;
});
