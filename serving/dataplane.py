"""The inference data plane: signature lookup, TF Serving's validation, batching, runs.

Front ends (gRPC in `prediction_service.py`, REST in `rest.py`) resolve the model
with the `ModelManager`, then call one `DataPlane` method. The data plane owns
every message TF Serving's `predict_util.cc`, `classifier.cc`, `regressor.cc`,
`multi_inference.cc` and `util.cc` produce (TFS_CONTRACT.md §5, §6), in the same
order of checks, so both surfaces fail the same way.

Tensors are fed and fetched by TENSOR NAME (`x:0`) through `Servable.run`, which
runs the graph like TF's C++ session: no static-shape check against the
signature, dtype mismatches reported by TensorFlow itself. With
`--enable_batching` every run goes through the shared `BatchScheduler`.

Deadlines are absolute `time.monotonic()` values (None = no deadline).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving import tensor_codec
from serving.batching import BatchingOptions, BatchScheduler
from serving.errors import ServingError, failed_precondition, invalid_argument, unimplemented

if TYPE_CHECKING:
    from serving.metrics import Metrics

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Fixed aliases of the classify/regress signature structure (signature_constants).
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"

_API_LABEL = {"predict": "Predict", "classify": "Classify", "regress": "Regress"}


def _keys(mapping) -> str:
    """A proto map's keys as TF Serving prints them: sorted, comma-joined."""
    return ",".join(sorted(mapping))


def make_model_spec(
    model_name: str, signature_name: str | None, version: int | None, spec: model_pb2.ModelSpec
) -> model_pb2.ModelSpec:
    """Fills a response `ModelSpec` like TF Serving's `MakeModelSpec`.

    Args:
      model_name: the model name from the request.
      signature_name: the requested signature; '' becomes `serving_default`;
        None leaves the field unset (GetModelMetadata).
      version: the resolved servable version.
      spec: the message to fill (cleared first).

    Returns:
      `spec`.
    """
    spec.Clear()
    spec.name = model_name
    if signature_name is not None:
        spec.signature_name = signature_name or DEFAULT_SIGNATURE
    if version is not None:
        spec.version.value = version
    return spec


def serialized_examples(model_input: input_pb2.Input) -> list[bytes]:
    """Turns a classify/regress `Input` into the serialized examples fed to the graph.

    With `example_list_with_context` each row is the serialized context followed by
    the serialized example; protobuf merge semantics make that the example with
    the context's features added (TF Serving feeds the same bytes).

    Raises:
      ServingError: INVALID_ARGUMENT `Input is empty.` when there are no examples.
    """
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        rows = [e.SerializeToString() for e in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        context = with_context.context.SerializeToString()
        rows = [context + e.SerializeToString() for e in with_context.examples]
    else:
        rows = []
    if not rows:
        raise invalid_argument("Input is empty.")
    return rows


class DataPlane:
    """Runs Predict / Classify / Regress / MultiInference on loaded servables.

    Args:
      manager: the `ModelManager` (kept for front ends that share the data plane).
      options: the frozen `ServerOptions`; reads `enable_batching`,
        `batching_parameters`, `enable_signature_method_name_check`,
        `enable_serialization_as_tensor_content`.
      metrics: where runtime latency, example counts and batching metrics go.
    """

    def __init__(self, manager: Any, options: Any, metrics: Metrics | None = None):
        self.manager = manager
        self.options = options
        self.metrics = metrics
        self.method_name_check = bool(getattr(options, "enable_signature_method_name_check", False))
        self.tensor_content_outputs = bool(getattr(options, "enable_serialization_as_tensor_content", False))
        self.batcher: BatchScheduler | None = None
        if getattr(options, "enable_batching", False):
            batching = BatchingOptions.from_proto(getattr(options, "batching_parameters", None))
            self.batcher = BatchScheduler(batching, metrics)

    def close(self) -> None:
        """Stops the batch threads after the queued batches ran (server shutdown)."""
        if self.batcher is not None:
            self.batcher.stop()

    # ------------------------------------------------------------------ signatures

    def signature(
        self, servable: Any, signature_name: str, api: str, rest: bool = False
    ) -> meta_graph_pb2.SignatureDef:
        """Looks up the signature a request names, with TF Serving's errors.

        Args:
          servable: the loaded `Servable`.
          signature_name: as requested; '' means `serving_default`.
          api: 'predict', 'classify' or 'regress'.
          rest: word the Predict not-found error as TF Serving's REST handler does.

        Returns:
          The `SignatureDef`.

        Raises:
          ServingError: Predict: FAILED_PRECONDITION `Serving signature key "S" not found.`
            (REST: INVALID_ARGUMENT-class 400 `Serving signature name: "S" not found in
            signature def`); Classify/Regress: INVALID_ARGUMENT
            `No signature was found with the name: S`; with
            `--enable_signature_method_name_check`, a method_name mismatch.
        """
        name = signature_name or DEFAULT_SIGNATURE
        signature = servable.signature_defs.get(name)
        if api == "predict":
            if signature is None:
                if rest:
                    raise failed_precondition(f'Serving signature name: "{name}" not found in signature def')
                raise failed_precondition(f'Serving signature key "{name}" not found.')
            if self.method_name_check and signature.method_name not in (
                PREDICT_METHOD,
                CLASSIFY_METHOD,
                REGRESS_METHOD,
            ):
                raise ServingError(
                    grpc.StatusCode.INTERNAL,
                    "Expected prediction signature method_name to be one of "
                    f"{{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. "
                    f"Was: {signature.method_name}",
                )
            return signature
        if signature is None:
            raise invalid_argument(f"No signature was found with the name: {name}")
        self._check_method(signature, api)
        return signature

    def _check_method(self, signature: meta_graph_pb2.SignatureDef, api: str) -> None:
        if not self.method_name_check:
            return
        expected = CLASSIFY_METHOD if api == "classify" else REGRESS_METHOD
        if signature.method_name != expected:
            kind = "classification" if api == "classify" else "regression"
            raise invalid_argument(
                f"Expected {kind} signature method_name to be {expected}. Was: {signature.method_name}"
            )

    # ------------------------------------------------------------------ predict

    def predict(
        self,
        servable: Any,
        signature_name: str,
        inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
        output_filter: Sequence[str] = (),
        deadline: float | None = None,
        rest: bool = False,
    ) -> dict[str, np.ndarray]:
        """Runs a Predict request with TF Serving's checks (predict_util.cc).

        Args:
          servable: the loaded `Servable`.
          signature_name: '' means `serving_default`.
          inputs: alias → tensor; `TensorProto` values are decoded here, after the
            signature checks, so errors come in TF Serving's order.
          output_filter: aliases to fetch; all outputs when empty.
          deadline: absolute `time.monotonic()` deadline, or None.
          rest: word a missing signature as the REST handler does.

        Returns:
          alias → output array.

        Raises:
          ServingError: see TFS_CONTRACT.md §5 / §6.
        """
        signature = self.signature(servable, signature_name, "predict", rest=rest)
        feeds = self._predict_feeds(signature, inputs)
        aliases, fetches = self._predict_fetches(signature, output_filter)
        outputs = self._run(servable, feeds, fetches, deadline, api="Predict")
        return dict(zip(aliases, outputs))

    def _predict_feeds(
        self,
        signature: meta_graph_pb2.SignatureDef,
        inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
    ) -> dict[str, np.ndarray]:
        sig_inputs = signature.inputs
        n_req, n_sig = len(inputs), len(sig_inputs)
        if n_req > n_sig or (n_req < n_sig and not signature.defaults):
            sent, wanted = set(inputs), set(sig_inputs)
            raise invalid_argument(
                f"input size does not match signature: {n_req}!={n_sig} "
                f"len({{{_keys(sent)}}}) != len({{{_keys(wanted)}}}). "
                f"Sent extra: {{{_keys(sent - wanted)}}}. "
                f"Missing but required: {{{_keys(wanted - sent)}}}."
            )
        feeds: dict[str, np.ndarray] = {}
        used = 0
        for alias in sorted(sig_inputs):
            feed_name = sig_inputs[alias].name
            value = inputs.get(alias)
            if value is None:
                if alias not in signature.defaults:
                    raise invalid_argument(
                        f"Signature input alias: {alias}(feed name: {feed_name}) not found in "
                        "request and no default value provided. Inputs expected to be in the "
                        f"request {{{_keys(inputs)}}}, or default input alias set: "
                        f"{_keys(signature.defaults)}"
                    )
                value = signature.defaults[alias]
            else:
                used += 1
            feeds[feed_name] = self._decode(alias, value)
        if inputs and used != len(inputs):
            seen = [a for a in sorted(inputs) if a in sig_inputs]
            raise invalid_argument(
                f"Inputs contains invalid name. Used request inputs: {','.join(seen)}, "
                f"request input: {_keys(inputs)}"
            )
        return feeds

    @staticmethod
    def _decode(alias: str, value: np.ndarray | tensor_pb2.TensorProto) -> np.ndarray:
        if isinstance(value, (np.ndarray, np.generic)):
            return np.asarray(value)
        try:
            return tensor_codec.to_numpy(value)
        except tensor_codec.TensorDecodeError as e:
            raise invalid_argument(f"tensor parsing error: {alias}") from e

    @staticmethod
    def _predict_fetches(
        signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
    ) -> tuple[list[str], list[str]]:
        outputs = signature.outputs
        aliases: list[str] = []
        for alias in output_filter:
            if alias not in outputs:
                raise invalid_argument(
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{_keys(outputs)}}}."
                )
            if alias in aliases:
                raise invalid_argument(f"duplicate output tensor alias: {alias}")
            aliases.append(alias)
        if not aliases:
            aliases = sorted(outputs)
        return aliases, [outputs[a].name for a in aliases]

    def predict_request(
        self, servable: Any, request: predict_pb2.PredictRequest, deadline: float | None = None
    ) -> predict_pb2.PredictResponse:
        """Answers a `PredictRequest` proto (gRPC and warmup replay).

        Returns:
          The response with `model_spec` (resolved version, signature name) and
          outputs in typed fields, or `tensor_content` when the server flag says so.
        """
        spec = request.model_spec
        outputs = self.predict(servable, spec.signature_name, request.inputs, request.output_filter, deadline)
        response = predict_pb2.PredictResponse()
        make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
        for alias, array in outputs.items():
            tensor_codec.from_numpy(array, self.tensor_content_outputs, response.outputs[alias])
        return response

    # ------------------------------------------------------------------ classify / regress

    def _example_input_name(self, signature: meta_graph_pb2.SignatureDef, api: str) -> str:
        """The input tensor name of a classify/regress signature (structure rules)."""
        if len(signature.inputs) != 1:
            raise invalid_argument("Expected one input Tensor.")
        if CLASSIFY_INPUTS not in signature.inputs:
            kind = "classification" if api == "classify" else "regression"
            raise failed_precondition(f"No {kind} inputs found in SignatureDef: {signature}")
        # Fed by name with the serialized examples, whatever dtype the signature
        # declares (half_plus_three's regress signature claims DT_FLOAT; TFS_CONTRACT §10.3).
        return signature.inputs[CLASSIFY_INPUTS].name

    def _classify_fetches(self, signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
        self._check_method(signature, "classify")
        input_name = self._example_input_name(signature, "classify")
        outputs = signature.outputs
        if len(outputs) not in (1, 2):
            raise invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
        if CLASSIFY_CLASSES not in outputs and CLASSIFY_SCORES not in outputs:
            raise failed_precondition(
                'Expected classification signature outputs to contain at least one of "classes" '
                f'or "scores". Signature was: {signature}'
            )
        fetches = [outputs[a].name for a in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if a in outputs]
        return input_name, fetches

    def _regress_fetches(self, signature: meta_graph_pb2.SignatureDef) -> tuple[str, list[str]]:
        self._check_method(signature, "regress")
        input_name = self._example_input_name(signature, "regress")
        if len(signature.outputs) != 1:
            raise invalid_argument("Expected one output Tensor.")
        if REGRESS_OUTPUTS not in signature.outputs:
            raise failed_precondition(f"No regression outputs found in SignatureDef: {signature}")
        return input_name, [signature.outputs[REGRESS_OUTPUTS].name]

    @staticmethod
    def _classify_result(
        signature: meta_graph_pb2.SignatureDef, num_examples: int, by_name: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        outputs = signature.outputs
        classes = by_name.get(outputs[CLASSIFY_CLASSES].name) if CLASSIFY_CLASSES in outputs else None
        scores = by_name.get(outputs[CLASSIFY_SCORES].name) if CLASSIFY_SCORES in outputs else None
        for label, tensor, dtype_ok, dtype in (
            ("classes", classes, lambda t: t.dtype == object, "DT_STRING"),
            ("scores", scores, lambda t: t.dtype == np.float32, "DT_FLOAT"),
        ):
            if tensor is None:
                continue
            if tensor.ndim != 2:
                raise invalid_argument(
                    f"Expected Tensor shape: [batch_size num_classes] but got {list(tensor.shape)}"
                )
            if not dtype_ok(tensor):
                raise invalid_argument(f"Expected {label} Tensor of {dtype}. Got: {_tf_dtype_name(tensor)}")
            if tensor.shape[0] != num_examples:
                raise invalid_argument(
                    f"Expected {label} output batch size of {num_examples}. Got: {tensor.shape[0]}"
                )
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise invalid_argument(
                "Tensors class and score should match in dim_size(1). Got "
                f"{classes.shape[1]} vs. {scores.shape[1]}"
            )
        return classes, scores

    @staticmethod
    def _regress_result(num_examples: int, tensor: np.ndarray) -> np.ndarray:
        if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
            raise invalid_argument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                f"but got {list(tensor.shape)}"
            )
        if tensor.shape[0] != num_examples:
            raise invalid_argument(
                f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}"
            )
        if tensor.dtype != np.float32:
            raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {_tf_dtype_name(tensor)}")
        return tensor.reshape(num_examples)

    def _run_examples(
        self,
        servable: Any,
        input_name: str,
        fetches: Sequence[str],
        examples: Sequence[bytes],
        deadline: float | None,
        api: str,
    ) -> dict[str, np.ndarray]:
        if not examples:
            raise invalid_argument("Input is empty.")
        if self.metrics is not None:
            self.metrics.record_example_count(servable.name, len(examples))
        batch = np.empty(len(examples), dtype=object)
        batch[:] = list(examples)
        unique = list(dict.fromkeys(fetches))
        outputs = self._run(servable, {input_name: batch}, unique, deadline, api=api)
        return dict(zip(unique, outputs))

    def classify(
        self,
        servable: Any,
        signature_name: str,
        serialized_examples: Sequence[bytes],
        deadline: float | None = None,
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Runs a classification signature on serialized `tf.Example`s.

        Returns:
          (classes [n,k] object array of bytes or None, scores [n,k] float32 or None).

        Raises:
          ServingError: unknown signature, wrong structure, `Input is empty.`, TF errors.
        """
        signature = self.signature(servable, signature_name, "classify")
        input_name, fetches = self._classify_fetches(signature)
        by_name = self._run_examples(servable, input_name, fetches, serialized_examples, deadline, "Classify")
        return self._classify_result(signature, len(serialized_examples), by_name)

    def regress(
        self,
        servable: Any,
        signature_name: str,
        serialized_examples: Sequence[bytes],
        deadline: float | None = None,
    ) -> np.ndarray:
        """Runs a regression signature on serialized `tf.Example`s.

        Returns:
          float32 array [n], one value per example.

        Raises:
          ServingError: unknown signature, wrong structure, `Input is empty.`, TF errors.
        """
        signature = self.signature(servable, signature_name, "regress")
        input_name, fetches = self._regress_fetches(signature)
        by_name = self._run_examples(servable, input_name, fetches, serialized_examples, deadline, "Regress")
        return self._regress_result(len(serialized_examples), by_name[fetches[0]])

    def classify_request(
        self,
        servable: Any,
        request: classification_pb2.ClassificationRequest,
        deadline: float | None = None,
    ) -> classification_pb2.ClassificationResponse:
        """Answers a `ClassificationRequest` proto (gRPC and warmup replay)."""
        spec = request.model_spec
        # Signature first: TF Serving reports a missing signature before an empty input.
        self.signature(servable, spec.signature_name, "classify")
        classes, scores = self.classify(
            servable, spec.signature_name, serialized_examples(request.input), deadline
        )
        response = classification_pb2.ClassificationResponse()
        make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
        _fill_classifications(response.result, classes, scores)
        return response

    def regress_request(
        self,
        servable: Any,
        request: regression_pb2.RegressionRequest,
        deadline: float | None = None,
    ) -> regression_pb2.RegressionResponse:
        """Answers a `RegressionRequest` proto (gRPC and warmup replay)."""
        spec = request.model_spec
        self.signature(servable, spec.signature_name, "regress")
        values = self.regress(servable, spec.signature_name, serialized_examples(request.input), deadline)
        response = regression_pb2.RegressionResponse()
        make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
        for value in values.tolist():
            response.result.regressions.add().value = value
        return response

    # ------------------------------------------------------------------ multi inference

    def multi_inference_request(
        self,
        servable: Any,
        request: inference_pb2.MultiInferenceRequest,
        deadline: float | None = None,
    ) -> inference_pb2.MultiInferenceResponse:
        """Answers a `MultiInferenceRequest`: several classify/regress signatures, one input.

        The servable must already be resolved from the first task's model spec.

        Raises:
          ServingError: INVALID_ARGUMENT for mixed model names, a signature named
            twice, an unknown signature or differing input tensors; UNIMPLEMENTED for
            a method_name other than classify/regress (multi_inference.cc).
        """
        model_name = ""
        input_name = ""
        seen: set[str] = set()
        plans: list[tuple[inference_pb2.InferenceTask, str, meta_graph_pb2.SignatureDef]] = []
        fetch_names: set[str] = set()
        for task in request.tasks:
            spec = task.model_spec
            if not spec.name:
                raise invalid_argument("Found ModelSpec with an empty model name.")
            if not model_name:
                model_name = spec.name
            elif spec.name != model_name:
                raise invalid_argument(
                    "All ModelSpecs in a MultiInferenceRequest must access the same model name."
                )
            name = spec.signature_name or DEFAULT_SIGNATURE
            if name in seen:
                raise invalid_argument(f"Duplicate evaluation of signature: {name}")
            seen.add(name)
            signature = servable.signature_defs.get(name)
            if signature is None:
                raise invalid_argument(f"Requested signature not found in model graph: {name}")
            if task.method_name == CLASSIFY_METHOD:
                this_input, fetches = self._classify_fetches(signature)
            elif task.method_name == REGRESS_METHOD:
                this_input, fetches = self._regress_fetches(signature)
            else:
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            if not input_name:
                input_name = this_input
            elif input_name != this_input:
                raise invalid_argument("Input tensor must be the same for all Signatures.")
            fetch_names.update(fetches)
            plans.append((task, name, signature))

        examples = serialized_examples(request.input)
        by_name = self._run_examples(
            servable, input_name, sorted(fetch_names), examples, deadline, "MultiInference"
        )
        response = inference_pb2.MultiInferenceResponse()
        for task, _, signature in plans:
            result = response.results.add()
            make_model_spec(
                task.model_spec.name,
                task.model_spec.signature_name,
                servable.version,
                result.model_spec,
            )
            if task.method_name == CLASSIFY_METHOD:
                classes, scores = self._classify_result(signature, len(examples), by_name)
                _fill_classifications(result.classification_result, classes, scores)
            else:
                tensor = by_name[signature.outputs[REGRESS_OUTPUTS].name]
                for value in self._regress_result(len(examples), tensor).tolist():
                    result.regression_result.regressions.add().value = value
        return response

    # ------------------------------------------------------------------ warmup

    def replay_warmup_record(self, servable: Any, prediction_log: prediction_log_pb2.PredictionLog) -> None:
        """Replays one warmup `PredictionLog` against a servable being loaded.

        The log's model name does not matter: the request runs on `servable`.

        Raises:
          ServingError: the request failed (fails the load, as in TF Serving), or
            UNIMPLEMENTED for `predict_streamed_log` / `session_run_log` / an empty log.
        """
        kind = prediction_log.WhichOneof("log_type")
        if kind == "predict_log":
            self.predict_request(servable, prediction_log.predict_log.request)
        elif kind == "classify_log":
            self.classify_request(servable, prediction_log.classify_log.request)
        elif kind == "regress_log":
            self.regress_request(servable, prediction_log.regress_log.request)
        elif kind == "multi_inference_log":
            self.multi_inference_request(servable, prediction_log.multi_inference_log.request)
        else:
            raise unimplemented(f"Unsupported log_type for warmup: {kind}")

    # ------------------------------------------------------------------ running

    def _run(
        self,
        servable: Any,
        feeds: dict[str, np.ndarray],
        fetches: Sequence[str],
        deadline: float | None,
        api: str,
    ) -> list[np.ndarray]:
        """One session run, through the batch scheduler when batching is on."""
        if deadline is not None and time.monotonic() >= deadline:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        start = time.perf_counter()
        if self.batcher is not None:
            outputs = self.batcher.run(servable, feeds, fetches, deadline)
        else:
            outputs = servable.run(feeds, fetches)
        if self.metrics is not None:
            self.metrics.record_runtime(servable.name, api, time.perf_counter() - start)
        return outputs


def _tf_dtype_name(array: np.ndarray) -> str:
    try:
        return types_pb2.DataType.Name(tensor_codec.tf_dtype_of(array))
    except TypeError:
        return str(array.dtype)


def _fill_classifications(
    result: classification_pb2.ClassificationResult,
    classes: np.ndarray | None,
    scores: np.ndarray | None,
) -> None:
    """Writes [n,k] classes/scores into a `ClassificationResult` (label '' / score 0 if absent)."""
    base = classes if classes is not None else scores
    if base is None:
        return
    num_examples, num_classes = base.shape
    class_rows = classes.tolist() if classes is not None else None
    score_rows = scores.tolist() if scores is not None else None
    for i in range(num_examples):
        entry = result.classifications.add()
        for c in range(num_classes):
            cls = entry.classes.add()
            if class_rows is not None:
                cls.label = tensor_codec.as_bytes(class_rows[i][c]).decode("utf-8", "replace")
            if score_rows is not None:
                cls.score = score_rows[i][c]
