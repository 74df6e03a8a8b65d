// textserve playground: type a text, see the model's label and class probabilities.
// Uses only this server's public REST API (TF Serving's routes and /openapi.json).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { doc: null, model: "", base: "", input: "", outputs: {}, classNames: null };

async function call(method, path, body) {
  const init = { method, headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let doc = null;
  try { doc = JSON.parse(text); } catch (e) { /* not JSON: reported below */ }
  if (!response.ok) {
    const message = doc && doc.error ? doc.error : text || "no body";
    throw new Error(`${method} ${path} answered ${response.status}: ${message}`);
  }
  return doc;
}

function showError(error) {
  $("error").textContent = error ? String(error.message || error) : "";
  $("error").hidden = !error;
}

function modelPath(model) {
  return `/v1/models/${encodeURIComponent(model)}`;
}

// The label enum the OpenAPI document gives this model's /labels/{label} routes.
function configuredLabels(model) {
  const path = state.doc.paths[`${modelPath(model)}/labels/{label}`];
  const parameter = path && path.parameters.find((p) => p.name === "label");
  return (parameter && parameter.schema.enum) || [];
}

async function selectModel() {
  showError(null);
  state.model = $("model").value;
  const status = await call("GET", modelPath(state.model));
  const versions = status.model_version_status.map((s) => `${s.version} (${s.state})`);
  $("versions").textContent = versions.join(", ") || "none";
  const target = $("target");
  target.replaceChildren(new Option("latest", ""));
  for (const s of status.model_version_status) {
    if (s.state === "AVAILABLE") target.add(new Option(`version ${s.version}`, `/versions/${s.version}`));
  }
  const labels = [];
  for (const label of configuredLabels(state.model)) {
    let version = "not loaded";
    try {
      const meta = await call("GET", `${modelPath(state.model)}/labels/${encodeURIComponent(label)}/metadata`);
      version = meta.model_spec.version;
    } catch (e) { /* a label may name a version that is not loaded yet */ }
    labels.push(`${label} → ${version}`);
    target.add(new Option(`label ${label}`, `/labels/${encodeURIComponent(label)}`));
  }
  $("labels").textContent = labels.join(", ") || "none";
  await selectTarget();
}

function rank(info) {
  return info.tensor_shape.unknown_rank ? -1 : info.tensor_shape.dim.length;
}

// Picks the outputs to show from serving_default: a string label, a float score, float probabilities.
function pickOutputs(outputs) {
  const find = (preferred, test) => {
    if (outputs[preferred] && test(outputs[preferred])) return preferred;
    return Object.keys(outputs).sort().find((alias) => test(outputs[alias])) || "";
  };
  return {
    label: find("label", (o) => o.dtype === "DT_STRING" && rank(o) === 1),
    score: find("score", (o) => o.dtype === "DT_FLOAT" && rank(o) === 1),
    probabilities: find("probabilities", (o) => o.dtype === "DT_FLOAT" && rank(o) === 2),
  };
}

async function selectTarget() {
  showError(null);
  $("predict").disabled = true;
  state.base = modelPath(state.model) + $("target").value;
  const meta = await call("GET", `${state.base}/metadata`);
  const signature = meta.metadata.signature_def.signature_def.serving_default;
  const inputs = signature ? Object.keys(signature.inputs) : [];
  if (inputs.length !== 1 || signature.inputs[inputs[0]].dtype !== "DT_STRING") {
    $("answering").textContent = `version ${meta.model_spec.version}`;
    throw new Error(`${state.model}'s serving_default does not take one string input; this page sends text`);
  }
  state.input = inputs[0];
  state.outputs = pickOutputs(signature.outputs);
  $("answering").textContent = `version ${meta.model_spec.version}, serving_default(${state.input})`;
  // Class names, in the order of the probabilities: one classify call on an empty example,
  // to a classification signature that reads the same feature as serving_default's input.
  state.classNames = null;
  const signatures = meta.metadata.signature_def.signature_def;
  const classify = Object.keys(signatures).sort().find(
    (name) => signatures[name].method_name === "tensorflow/serving/classify");
  if (classify) {
    try {
      const request = { signature_name: classify, examples: [{ [state.input]: "" }] };
      const answer = await call("POST", `${state.base}:classify`, request);
      state.classNames = answer.results[0].map((pair) => pair[0]);
    } catch (e) { /* it reads other features: the bars are numbered instead */ }
  }
  $("predict").disabled = false;
}

function shellQuote(text) {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

function renderBars(probabilities, top) {
  const bars = $("bars");
  bars.replaceChildren();
  probabilities.forEach((p, i) => {
    const name = state.classNames && state.classNames[i] !== undefined ? state.classNames[i] : `class ${i}`;
    const row = document.createElement("div");
    row.className = i === top ? "bar top" : "bar";
    row.setAttribute("role", "listitem");
    row.dataset.label = name;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(Math.max(0, Math.min(1, p)) * 100).toFixed(1)}%`;
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = p.toFixed(3);
    row.append(label, track, value);
    bars.append(row);
  });
}

async function predict() {
  showError(null);
  const path = `${state.base}:predict`;
  const body = { instances: [$("text").value] };
  $("curl").textContent =
    `curl -X POST -H 'Content-Type: application/json' ${shellQuote(window.location.origin + path)} ` +
    `-d ${shellQuote(JSON.stringify(body))}`;
  $("predict").disabled = true;
  try {
    const answer = await call("POST", path, body);
    const row = answer.predictions[0];
    $("response").textContent = JSON.stringify(answer, null, 2);
    const { label, score, probabilities } = state.outputs;
    const values = row !== null && typeof row === "object" ? row : {};
    const p = probabilities ? values[probabilities] : null;
    const top = p ? p.indexOf(Math.max(...p)) : -1;
    $("label").textContent = label ? values[label] : state.classNames && top >= 0 ? state.classNames[top] : "";
    $("score").textContent = score ? `(score ${Number(values[score]).toFixed(3)})` : "";
    renderBars(p || [], top);
    $("result").hidden = false;
    document.body.dataset.predictions = String(Number(document.body.dataset.predictions || 0) + 1);
  } finally {
    $("predict").disabled = false;
  }
}

async function start() {
  state.doc = await call("GET", "/openapi.json");
  const models = state.doc.tags.map((tag) => tag.name);
  if (!models.length) throw new Error("no model is loaded yet; reload the page once one is");
  for (const model of models) $("model").add(new Option(model, model));
  await selectModel();
}

const reportErrors = (fn) => () => fn().catch(showError);
$("model").addEventListener("change", reportErrors(selectModel));
$("target").addEventListener("change", reportErrors(selectTarget));
$("predict").addEventListener("click", reportErrors(predict));
reportErrors(start)();
