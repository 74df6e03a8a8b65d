"""The inference data plane: signature lookup, TF Serving's validation, batching, runs.

Front ends (gRPC in `prediction_service.py`, REST in `rest.py`) resolve the model
with the `ModelManager` once, then ask the `DataPlane` for a `RunPlan`: the
request checked with TF Serving's messages in TF Serving's order
(`predict_util.cc`, `classifier.cc`, `regressor.cc`, `multi_inference.cc`;
TFS_CONTRACT.md §5, §6), decoded into feeds, and a `finish` step that turns the
fetched tensors into the answer. The plan then runs with `await
run_async(plan, deadline)` from the event loop or `run(plan, deadline)` from a
thread (`serving.plan_runner`: batching, deadlines, cancellation).

Tensors are fed and fetched by TENSOR NAME (`x:0`) through `Servable.run`, which
runs the graph like TF's C++ session. Deadlines are absolute
`time.monotonic()` values (None = none).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    model_pb2,
    predict_pb2,
    prediction_log_pb2,
    regression_pb2,
)

from serving import example_signatures as sigs
from serving import tensor_codec
from serving.errors import (
    ServingError,
    failed_precondition,
    invalid_argument,
    unimplemented,
)
from serving.example_signatures import CLASSIFY_METHOD, REGRESS_METHOD, serialized_examples
from serving.plan_runner import PlanRunner, RunPlan

if TYPE_CHECKING:
    from serving.metrics import Metrics
    from serving.request_log import RequestLog

__all__ = ["DataPlane", "RunPlan", "make_model_spec", "serialized_examples"]

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"


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


class DataPlane(PlanRunner):
    """Plans and runs Predict / Classify / Regress / MultiInference on loaded servables.

    Args:
      manager: the `ModelManager` (kept for front ends that share the data plane).
      options: the frozen `ServerOptions`; reads `enable_batching`,
        `batching_parameters`, `batching_idle_fast_path`,
        `enable_signature_method_name_check`, `enable_serialization_as_tensor_content`,
        `max_rows_per_session_run`, `grpc_max_threads` and `rest_api_num_threads`.
      metrics: where runtime latency, example counts and batching metrics go.
      request_log: where sampled calls from the front ends are logged (None: off).
    """

    def __init__(
        self,
        manager: Any,
        options: Any,
        metrics: Metrics | None = None,
        request_log: RequestLog | None = None,
    ):
        self.manager = manager
        self.options = options
        self.metrics = metrics
        self.request_log = request_log
        self.method_name_check = bool(getattr(options, "enable_signature_method_name_check", False))
        self.tensor_content_outputs = bool(getattr(options, "enable_serialization_as_tensor_content", False))
        PlanRunner.__init__(self, options, metrics)

    def run_async(self, plan: RunPlan, deadline: float | None = None) -> Coroutine[Any, Any, Any]:
        """`PlanRunner.run_async`, and a request log record when the call is sampled.

        Both front ends run their calls here (warmup replays use `run`, so they
        are never logged). An unsampled call gets `PlanRunner.run_async`'s own
        coroutine, so logging costs nothing when it is off.
        """
        request_log = self.request_log
        if request_log is None or not request_log.sampled():
            return PlanRunner.run_async(self, plan, deadline)
        return self._run_logged(plan, deadline, request_log)

    async def _run_logged(self, plan: RunPlan, deadline: float | None, request_log: RequestLog) -> Any:
        """Runs the plan, keeping the fetched arrays, and hands them to the log's writer thread."""
        start = time.perf_counter()
        fetched: list[list[np.ndarray]] = []
        finish = plan.finish

        def keep_outputs(outputs: list[np.ndarray]) -> Any:
            fetched.append(outputs)
            return finish(outputs)

        plan.finish = keep_outputs
        answer = await PlanRunner.run_async(self, plan, deadline)
        request_log.submit(
            plan.servable, plan.api, plan.feeds, plan.fetches, fetched[0], time.perf_counter() - start
        )
        return answer

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
        return signature

    # ------------------------------------------------------------------ predict

    def plan_predict(
        self,
        servable: Any,
        signature_name: str,
        inputs: Mapping[str, np.ndarray | tensor_pb2.TensorProto],
        output_filter: Sequence[str] = (),
        rest: bool = False,
    ) -> RunPlan:
        """Checks a Predict request (predict_util.cc); the plan finishes as alias → array.

        Args:
          servable: the loaded `Servable`.
          signature_name: '' means `serving_default`.
          inputs: alias → tensor; `TensorProto` values are decoded here, after the
            signature checks, so errors come in TF Serving's order.
          output_filter: aliases to fetch; all outputs when empty.
          rest: word a missing signature as the REST handler does.

        Returns:
          The plan; its `finish` returns {alias: output array}.

        Raises:
          ServingError: see TFS_CONTRACT.md §5 / §6.
        """
        signature = self.signature(servable, signature_name, "predict", rest=rest)
        feeds = self._predict_feeds(signature, inputs)
        aliases, fetches = self._predict_fetches(signature, output_filter)
        return RunPlan(
            servable, feeds, tuple(fetches), "Predict", lambda outputs: dict(zip(aliases, outputs))
        )

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

    def plan_predict_request(self, servable: Any, request: predict_pb2.PredictRequest) -> RunPlan:
        """Checks a `PredictRequest` proto; the plan finishes as a `PredictResponse`.

        The response has `model_spec` (resolved version, signature name) and
        outputs in typed fields, or `tensor_content` when the server flag says so.
        """
        spec = request.model_spec
        plan = self.plan_predict(servable, spec.signature_name, request.inputs, request.output_filter)
        by_alias = plan.finish

        def finish(outputs: list[np.ndarray]) -> predict_pb2.PredictResponse:
            response = predict_pb2.PredictResponse()
            make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
            for alias, array in by_alias(outputs).items():
                tensor_codec.from_numpy(array, self.tensor_content_outputs, response.outputs[alias])
            return response

        plan.finish = finish
        return plan

    # ------------------------------------------------------------------ classify / regress

    def _examples_plan(
        self,
        servable: Any,
        input_name: str,
        fetches: Sequence[str],
        examples: Sequence[bytes],
        api: str,
        finish: Callable[[list[np.ndarray]], Any],
    ) -> RunPlan:
        if not examples:
            raise invalid_argument("Input is empty.")
        if self.metrics is not None:
            self.metrics.record_example_count(servable.name, len(examples))
        batch = np.empty(len(examples), dtype=object)
        batch[:] = examples
        return RunPlan(servable, {input_name: batch}, tuple(fetches), api, finish)

    def plan_classify(self, servable: Any, signature_name: str, serialized: Sequence[bytes]) -> RunPlan:
        """Checks a classification request on serialized `tf.Example`s.

        Returns:
          The plan; its `finish` returns (classes [n,k] object array of bytes or
          None, scores [n,k] float32 or None).

        Raises:
          ServingError: unknown signature, wrong structure, `Input is empty.`.
        """
        signature = self.signature(servable, signature_name, "classify")
        input_name, fetches = sigs.classify_fetches(signature, self.method_name_check)
        unique = list(dict.fromkeys(fetches))
        count = len(serialized)
        return self._examples_plan(
            servable,
            input_name,
            unique,
            serialized,
            "Classify",
            lambda outputs: sigs.classify_result(signature, count, dict(zip(unique, outputs))),
        )

    def plan_regress(self, servable: Any, signature_name: str, serialized: Sequence[bytes]) -> RunPlan:
        """Checks a regression request on serialized `tf.Example`s.

        Returns:
          The plan; its `finish` returns a float32 array [n], one value per example.

        Raises:
          ServingError: unknown signature, wrong structure, `Input is empty.`.
        """
        signature = self.signature(servable, signature_name, "regress")
        input_name, fetches = sigs.regress_fetches(signature, self.method_name_check)
        count = len(serialized)
        return self._examples_plan(
            servable,
            input_name,
            fetches,
            serialized,
            "Regress",
            lambda outputs: sigs.regress_result(count, outputs[0]),
        )

    def plan_classify_request(
        self, servable: Any, request: classification_pb2.ClassificationRequest
    ) -> RunPlan:
        """Checks a `ClassificationRequest` proto; the plan finishes as its response."""
        spec = request.model_spec
        # Signature and its structure first: TF Serving checks them before the input.
        signature = self.signature(servable, spec.signature_name, "classify")
        sigs.classify_fetches(signature, self.method_name_check)
        plan = self.plan_classify(servable, spec.signature_name, serialized_examples(request.input))
        arrays = plan.finish

        def finish(outputs: list[np.ndarray]) -> classification_pb2.ClassificationResponse:
            classes, scores = arrays(outputs)
            response = classification_pb2.ClassificationResponse()
            make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
            sigs.fill_classifications(response.result, classes, scores)
            return response

        plan.finish = finish
        return plan

    def plan_regress_request(self, servable: Any, request: regression_pb2.RegressionRequest) -> RunPlan:
        """Checks a `RegressionRequest` proto; the plan finishes as its response."""
        spec = request.model_spec
        signature = self.signature(servable, spec.signature_name, "regress")
        sigs.regress_fetches(signature, self.method_name_check)
        plan = self.plan_regress(servable, spec.signature_name, serialized_examples(request.input))
        values = plan.finish

        def finish(outputs: list[np.ndarray]) -> regression_pb2.RegressionResponse:
            response = regression_pb2.RegressionResponse()
            make_model_spec(spec.name, spec.signature_name, servable.version, response.model_spec)
            for value in values(outputs).tolist():
                response.result.regressions.add().value = value
            return response

        plan.finish = finish
        return plan

    # ------------------------------------------------------------------ multi inference

    def plan_multi_inference_request(
        self,
        servable: Any,
        request: inference_pb2.MultiInferenceRequest,
    ) -> RunPlan:
        """Plans a `MultiInferenceRequest`: several classify/regress signatures, one input.

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
                this_input, fetches = sigs.classify_fetches(signature, self.method_name_check)
            elif task.method_name == REGRESS_METHOD:
                this_input, fetches = sigs.regress_fetches(signature, self.method_name_check)
            else:
                raise unimplemented(f"Unsupported signature method_name: {task.method_name}")
            if not input_name:
                input_name = this_input
            elif input_name != this_input:
                raise invalid_argument("Input tensor must be the same for all Signatures.")
            fetch_names.update(fetches)
            plans.append((task, name, signature))

        examples = sigs.serialized_examples(request.input)
        fetches = sorted(fetch_names)

        def finish(outputs: list[np.ndarray]) -> inference_pb2.MultiInferenceResponse:
            by_name = dict(zip(fetches, outputs))
            response = inference_pb2.MultiInferenceResponse()
            for task, _, signature in plans:
                result = response.results.add()
                make_model_spec(
                    task.model_spec.name, task.model_spec.signature_name, servable.version, result.model_spec
                )
                if task.method_name == CLASSIFY_METHOD:
                    classes, scores = sigs.classify_result(signature, len(examples), by_name)
                    sigs.fill_classifications(result.classification_result, classes, scores)
                else:
                    tensor = by_name[signature.outputs[sigs.REGRESS_OUTPUTS].name]
                    for value in sigs.regress_result(len(examples), tensor).tolist():
                        result.regression_result.regressions.add().value = value
            return response

        return self._examples_plan(servable, input_name, fetches, examples, "MultiInference", finish)

    # ------------------------------------------------------------------ blocking calls (warmup)

    def predict_request(
        self, servable: Any, request: predict_pb2.PredictRequest, deadline: float | None = None
    ) -> predict_pb2.PredictResponse:
        """Answers a `PredictRequest` on this thread (warmup replay)."""
        return self.run(self.plan_predict_request(servable, request), deadline)

    def classify_request(
        self, servable: Any, request: classification_pb2.ClassificationRequest, deadline: float | None = None
    ) -> classification_pb2.ClassificationResponse:
        """Answers a `ClassificationRequest` on this thread (warmup replay)."""
        return self.run(self.plan_classify_request(servable, request), deadline)

    def regress_request(
        self, servable: Any, request: regression_pb2.RegressionRequest, deadline: float | None = None
    ) -> regression_pb2.RegressionResponse:
        """Answers a `RegressionRequest` on this thread (warmup replay)."""
        return self.run(self.plan_regress_request(servable, request), deadline)

    def multi_inference_request(
        self, servable: Any, request: inference_pb2.MultiInferenceRequest, deadline: float | None = None
    ) -> inference_pb2.MultiInferenceResponse:
        """Answers a `MultiInferenceRequest` on this thread (warmup replay)."""
        return self.run(self.plan_multi_inference_request(servable, request), deadline)

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
