"""The comparison behind the runtime check: the same requests, two runtimes, one verdict.

`build_calls` turns an export into the requests TF Serving would run on it:
`serving_default` and `classify` over `DOCUMENTS`, and every record of its
`assets.extra/tf_serving_warmup_requests`, each as serialized TensorProtos fed
to the signature's tensors. `run_reference` answers them with this process's
TensorFlow (the exporter's); `c_api_runner.py` answers them under the image's
TensorFlow; `compare` says whether the two agree:

* an op the image's runtime does not register, or a load or run error, fails;
* any string or integer output (`label`, `class_id`, `classes`) that differs
  in any row fails ("label disagreement");
* float outputs (`probabilities`, `score`, `scores`) may differ by rounding
  only: the largest |Δ| is reported as max |Δp| and fails above `tolerance`.

The calls follow textserve's export contract (model/export.py): `serving_default`
takes one `[None]` string tensor of raw documents, and `classify` reads a bytes
feature of that name from each `tf.Example`.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import message
from tensorflow.core.framework import op_def_pb2, tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

PREDICT_SIGNATURE = "serving_default"
CLASSIFY_SIGNATURE = "classify"
SERVE_TAG = "serve"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"

# (why it is here, document). Non-ASCII text is where two runtimes can differ:
# tensorflow-text's NormalizeUTF8 (NFKC) and CaseFoldUTF8 answer from the ICU
# tables compiled into them, and characters newer than those tables pass
# through unchanged.
DOCUMENTS: tuple[tuple[str, str], ...] = (
    ("news, ASCII", "Shares in the carmaker rose sharply after strong quarterly profits at the bank."),
    ("news, ASCII", "The striker scored twice in the cup final and the keeper saved a late penalty."),
    ("news, ASCII", "The rocket reached orbit and the astronauts began their mission to the moon."),
    ("news, ASCII", "Simmer the garlic and onion in butter, then bake the bread in a hot oven."),
    ("empty document", ""),
    ("whitespace only", " \t\n "),
    ("markup and punctuation", "<p>Profits <b>ROSE</b> at the bank&nbsp;&mdash; again!!!</p>"),
    ("Latin diacritics", "Müller's café in Zürich: naïve résumé, São Paulo, Łódź, Ærøskøbing"),
    ("NFKC: full-width, ligature, super/subscripts", "ＳＨＡＲＥＳ ＲＯＳＥ ﬁnance ² ½ ℌ₂ ㎏"),
    ("case folding", "STRASSE Straße İstanbul ΣΊΣΥΦΟΣ ǅemal ﬀ"),
    ("CJK", "股票 上涨 利润 银行 足球 比赛 火箭 发射"),
    ("Arabic, right to left", "ارتفعت الأسهم بعد أرباح البنك"),
    ("Devanagari, combining marks", "शेयरों में तेजी आई और बैंक का मुनाफा बढ़ा"),
    ("Cyrillic", "Нападающий забил гол в финале кубка лиги"),
    ("emoji with ZWJ and skin tone", "👩🏽‍🚀 launched 🚀 to the 🌕 and the 📈 rose"),
    # Alone in their documents, so the label hangs on how they normalise: the
    # synthetic training corpus has "123", "45", "ꟁ" and "ꟑ" in its vocabulary.
    ("Unicode 13 segmented digits (NFKC → 123 45)", "🯱🯲🯳 🯴🯵"),
    ("the same after NFKC, as a control", "123 45"),
    ("Unicode 14 case pairs (case fold → ꟁ ꟑ)", "Ꟁ Ꟑ 𝼀"),
    ("Unicode 15 modifier letters (NFKC → Cyrillic)", "\U0001e030\U0001e031 гол \U0001e032 кубок"),
    ("long document", " ".join(["shares rose at the bank"] * 120)),
)


class ProbeError(RuntimeError):
    """The export cannot be probed (a missing signature or an unreadable file)."""


@dataclass
class Call:
    """One request as TF Serving runs it: serialized inputs fed to a signature's tensors.

    Attributes:
      name: what the report calls it ("serving_default", "warmup record 3").
      signature: the signature key.
      inputs: signature input alias → TensorProto.
      outputs: signature output aliases to fetch, in order.
      rows: what each row of the batch is, for messages.
    """

    name: str
    signature: str
    inputs: dict[str, tensor_pb2.TensorProto]
    outputs: list[str]
    rows: list[str]


def read_meta_graph(version_dir: Path) -> meta_graph_pb2.MetaGraphDef:
    """The `serve` MetaGraphDef of an export (the one TF Serving loads)."""
    path = version_dir / "saved_model.pb"
    try:
        saved_model = saved_model_pb2.SavedModel.FromString(path.read_bytes())
    except OSError as error:
        raise ProbeError(
            f"{path}: cannot read it ({error.strerror}); pass an export version directory"
        ) from error
    except message.DecodeError as error:
        raise ProbeError(f"{path}: not a SavedModel ({error}); re-export it") from error
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ProbeError(f"{path}: no MetaGraph tagged {SERVE_TAG!r}, so TF Serving would not load it")


def graph_ops(meta_graph: meta_graph_pb2.MetaGraphDef) -> set[str]:
    """Every op type the graph and its function library use."""
    ops = {node.op for node in meta_graph.graph_def.node}
    for function in meta_graph.graph_def.library.function:
        ops.update(node.op for node in function.node_def)
    # Calls of library functions name the function, not a registered op.
    return ops - {function.signature.name for function in meta_graph.graph_def.library.function}


def unknown_ops(meta_graph: meta_graph_pb2.MetaGraphDef, serialized_op_list: bytes) -> list[str]:
    """The graph's op types that a runtime's registry (a serialized OpList) lacks."""
    registered = {op.name for op in op_def_pb2.OpList.FromString(serialized_op_list).op}
    return sorted(graph_ops(meta_graph) - registered)


def _strings(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    return tf.make_tensor_proto(np.array(list(values), dtype=object), dtype=tf.string)


def _signature(meta_graph: meta_graph_pb2.MetaGraphDef, key: str, version_dir: Path):
    if key not in meta_graph.signature_def:
        raise ProbeError(
            f"{version_dir}: no signature {key!r} (has {sorted(meta_graph.signature_def)}); "
            "the check expects textserve's export signatures"
        )
    return meta_graph.signature_def[key]


def build_calls(version_dir: Path, documents: Sequence[tuple[str, str]]) -> list[Call]:
    """The requests to replay on both runtimes: predict and classify over documents, then warmup.

    Args:
      version_dir: the export version directory.
      documents: (what it is, text) pairs, like `DOCUMENTS`.

    Raises:
      ProbeError: when a signature the calls need is missing or a warmup record is unreadable.
    """
    meta_graph = read_meta_graph(version_dir)
    predict = _signature(meta_graph, PREDICT_SIGNATURE, version_dir)
    if len(predict.inputs) != 1:
        raise ProbeError(
            f"{version_dir}: {PREDICT_SIGNATURE} takes {sorted(predict.inputs)}, not one text input"
        )
    (text_key,) = predict.inputs
    classify = _signature(meta_graph, CLASSIFY_SIGNATURE, version_dir)
    (examples_key,) = classify.inputs
    encoded = [text.encode("utf-8") for _, text in documents]
    examples = [
        tf.train.Example(
            features=tf.train.Features(
                feature={text_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[d]))}
            )
        ).SerializeToString()
        for d in encoded
    ]
    rows = [what for what, _ in documents]
    calls = [
        Call(
            PREDICT_SIGNATURE, PREDICT_SIGNATURE, {text_key: _strings(encoded)}, sorted(predict.outputs), rows
        ),
        Call(
            CLASSIFY_SIGNATURE,
            CLASSIFY_SIGNATURE,
            {examples_key: _strings(examples)},
            sorted(classify.outputs),
            rows,
        ),
    ]
    calls.extend(_warmup_calls(version_dir, meta_graph))
    return calls


def _warmup_calls(version_dir: Path, meta_graph: meta_graph_pb2.MetaGraphDef) -> list[Call]:
    """One call per warmup record, fed exactly the TensorProtos the record holds."""
    path = version_dir / WARMUP_FILE
    if not path.is_file():
        return []
    calls = []
    for number, record in enumerate(tf.data.TFRecordDataset(str(path)).as_numpy_iterator(), start=1):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        name = f"warmup record {number}"
        kind = log.WhichOneof("log_type")
        if kind == "predict_log":
            request = log.predict_log.request
            key = request.model_spec.signature_name or PREDICT_SIGNATURE
            signature = _signature(meta_graph, key, version_dir)
            unknown = sorted(set(request.inputs) - set(signature.inputs))
            if unknown:
                raise ProbeError(f"{path}: record {number} feeds {unknown}, which {key} does not take")
            outputs = sorted(request.output_filter or signature.outputs)
            batch = min(
                (t.tensor_shape.dim[0].size for t in request.inputs.values() if t.tensor_shape.dim), default=1
            )
            calls.append(
                Call(name, key, dict(request.inputs), outputs, [f"{name} row {i}" for i in range(batch)])
            )
        elif kind == "classify_log":
            request = log.classify_log.request
            key = request.model_spec.signature_name or PREDICT_SIGNATURE
            signature = _signature(meta_graph, key, version_dir)
            (examples_key,) = signature.inputs
            serialized = [e.SerializeToString() for e in request.input.example_list.examples]
            rows = [f"{name} example {i}" for i in range(len(serialized))]
            calls.append(
                Call(name, key, {examples_key: _strings(serialized)}, sorted(signature.outputs), rows)
            )
        else:
            raise ProbeError(
                f"{path}: record {number} is a {kind}; the check replays predict and classify logs"
            )
    return calls


def worker_job(version_dir: Path, calls: Sequence[Call], load_text_ops: bool = True) -> dict:
    """The job `c_api_runner.py` runs: tensor names from the signatures, inputs as base64."""
    signatures = read_meta_graph(version_dir).signature_def
    runs = []
    for call in calls:
        signature = signatures[call.signature]
        feeds = {
            signature.inputs[alias].name: base64.b64encode(proto.SerializeToString()).decode("ascii")
            for alias, proto in call.inputs.items()
        }
        fetches = [signature.outputs[alias].name for alias in call.outputs]
        runs.append({"name": call.name, "feeds": feeds, "fetches": fetches})
    return {
        "export_dir": str(version_dir.resolve()),
        "tags": [SERVE_TAG],
        "load_text_ops": load_text_ops,
        "runs": runs,
    }


def run_reference(version_dir: Path, calls: Sequence[Call]) -> list[dict[str, np.ndarray]]:
    """Answers the calls with this process's TensorFlow, through the loaded signatures."""
    import tensorflow_text  # noqa: F401  registers the text ops the export's graph uses

    loaded = tf.saved_model.load(str(version_dir))
    answers = []
    for call in calls:
        function = loaded.signatures[call.signature]
        outputs = function(**{alias: tf.constant(tf.make_ndarray(p)) for alias, p in call.inputs.items()})
        answers.append({alias: outputs[alias].numpy() for alias in call.outputs})
    return answers


_NUMPY_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64, 10: np.bool_}


def decode_worker_runs(result: dict, calls: Sequence[Call]) -> list[dict[str, np.ndarray]]:
    """The worker's outputs as numpy arrays keyed like `run_reference`'s."""
    answers = []
    for call, run in zip(calls, result["runs"]):
        outputs = {}
        for alias, tensor in zip(call.outputs, run["outputs"]):
            if tensor["dtype"] == 7:  # DT_STRING
                values = np.array([base64.b64decode(v) for v in tensor["values"]], dtype=object)
            else:
                values = np.array(tensor["values"], dtype=_NUMPY_DTYPES.get(tensor["dtype"], np.float64))
            outputs[alias] = values.reshape(tensor["shape"])
        answers.append(outputs)
    return answers


@dataclass
class CallResult:
    """How one call's answers compare: rows whose discrete outputs differ, and the largest float |Δ|."""

    name: str
    rows: int
    disagreements: list[str] = field(default_factory=list)
    max_delta: float = 0.0
    worst_row: str = ""  # the row where max_delta occurs


@dataclass
class Comparison:
    """The verdict over every call."""

    calls: list[CallResult]
    tolerance: float

    @property
    def max_delta(self) -> float:
        """The largest |Δ| of any float output in any call (max |Δp|)."""
        return max((c.max_delta for c in self.calls), default=0.0)

    @property
    def disagreements(self) -> list[str]:
        """Every row, in every call, whose label-like outputs differ."""
        return [d for c in self.calls for d in c.disagreements]

    @property
    def passed(self) -> bool:
        """No label disagreement, and float outputs within the tolerance."""
        return not self.disagreements and self.max_delta <= self.tolerance


def compare(
    calls: Sequence[Call],
    reference: Sequence[dict[str, np.ndarray]],
    candidate: Sequence[dict[str, np.ndarray]],
    tolerance: float,
) -> Comparison:
    """Compares two runtimes' answers call by call, output by output, row by row.

    Args:
      calls: the calls both answered.
      reference: this process's answers (`run_reference`).
      candidate: the image runtime's answers (`decode_worker_runs`).
      tolerance: the largest |Δ| allowed between float outputs.

    Returns:
      A `Comparison`; a shape or dtype-kind mismatch counts as a disagreement
      of every row.
    """
    results = []
    for call, expected, actual in zip(calls, reference, candidate, strict=True):
        result = CallResult(call.name, len(call.rows))
        differing: dict[int, list[str]] = {}
        for alias in call.outputs:
            delta, worst = _compare_output(alias, expected[alias], actual[alias], len(call.rows), differing)
            if delta > result.max_delta:
                result.max_delta, result.worst_row = delta, call.rows[worst]
        result.disagreements = [
            f"{call.name}, {call.rows[row] if row < len(call.rows) else f'row {row}'}: {'; '.join(what)}"
            for row, what in sorted(differing.items())
        ]
        results.append(result)
    return Comparison(results, tolerance)


def _compare_output(
    alias: str, want: np.ndarray, got: np.ndarray, rows: int, differing: dict[int, list[str]]
) -> tuple[float, int]:
    """Compares one output of one call; notes differing rows in `differing`.

    Returns:
      (the largest float |Δ|, the row where it occurs); (0.0, 0) for discrete outputs.
    """

    def note(row: int, what: str) -> None:
        differing.setdefault(row, []).append(what)

    if want.shape != got.shape or want.dtype.kind != got.dtype.kind:
        for row in range(rows):
            note(row, f"{alias} {want.shape} {want.dtype} here, {got.shape} {got.dtype} in the image")
        return 0.0, 0
    if want.dtype.kind == "f":
        if not want.size:
            return 0.0, 0
        if want.ndim == 2 and want.shape[1] > 1:  # per-class scores: the top class is a label too
            for index in np.flatnonzero(want.argmax(axis=1) != got.argmax(axis=1)):
                row = int(index)
                note(row, f"top class of {alias} {want[row].argmax()} here, {got[row].argmax()} in the image")
        deltas = np.abs(want - got).reshape(len(want), -1).max(axis=1)
        return float(deltas.max()), int(deltas.argmax())
    if not want.ndim:
        want, got = want.reshape(1), got.reshape(1)
    for index in np.flatnonzero((want != got).reshape(len(want), -1).any(axis=1)):
        row = int(index)
        note(row, f"{alias} {_show(want[row])} here, {_show(got[row])} in the image")
    return 0.0, 0


def _show(value) -> str:
    """A short, readable form of one row of an output."""
    items = (
        value.ravel().tolist() if isinstance(value, np.ndarray) else [getattr(value, "item", lambda: value)()]
    )
    shown = [item.decode("utf-8", "replace") if isinstance(item, bytes) else item for item in items]
    return repr(shown if isinstance(value, np.ndarray) else shown[0])
