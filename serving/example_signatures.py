"""The classify and regress signature rules of TF Serving (classifier.cc, regressor.cc).

Which signature structure the Classify / Regress / MultiInference APIs accept,
which tensors they feed and fetch, and how the fetched tensors become
`ClassificationResult` / regression values, with TF Serving's codes and
messages in its order of checks (TFS_CONTRACT.md §5, §6): method name (with
`--enable_signature_method_name_check`), input count, output count, the
`inputs` key, then the output keys; every structural failure is INVALID_ARGUMENT.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2

from serving import tensor_codec
from serving.errors import invalid_argument

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Fixed aliases of the classify/regress signature structure (signature_constants).
CLASSIFY_INPUTS = "inputs"
CLASSIFY_CLASSES = "classes"
CLASSIFY_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


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


def check_method(signature: meta_graph_pb2.SignatureDef, api: str, method_name_check: bool) -> None:
    """With `--enable_signature_method_name_check`, the signature's method_name must match the API.

    Raises:
      ServingError: INVALID_ARGUMENT `Expected classification signature method_name to be ...`.
    """
    if not method_name_check:
        return
    expected = CLASSIFY_METHOD if api == "classify" else REGRESS_METHOD
    if signature.method_name != expected:
        kind = "classification" if api == "classify" else "regression"
        raise invalid_argument(
            f"Expected {kind} signature method_name to be {expected}. Was: {signature.method_name}"
        )


def classify_fetches(
    signature: meta_graph_pb2.SignatureDef, method_name_check: bool
) -> tuple[str, list[str]]:
    """The input tensor name and the fetched tensor names of a classification signature.

    Raises:
      ServingError: INVALID_ARGUMENT for a structure Classify cannot serve.
    """
    check_method(signature, "classify", method_name_check)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    outputs = signature.outputs
    if len(outputs) not in (1, 2):
        raise invalid_argument(f"Expected one or two output Tensors, found {len(outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise invalid_argument(f"No classification inputs found in SignatureDef: {signature}")
    if CLASSIFY_CLASSES not in outputs and CLASSIFY_SCORES not in outputs:
        raise invalid_argument(
            'Expected classification signature outputs to contain at least one of "classes" '
            f'or "scores". Signature was: {signature}'
        )
    fetches = [outputs[a].name for a in (CLASSIFY_CLASSES, CLASSIFY_SCORES) if a in outputs]
    # Fed by name with the serialized examples, whatever dtype the signature
    # declares (half_plus_three's regress signature claims DT_FLOAT; TFS_CONTRACT §10.3).
    return signature.inputs[CLASSIFY_INPUTS].name, fetches


def regress_fetches(signature: meta_graph_pb2.SignatureDef, method_name_check: bool) -> tuple[str, list[str]]:
    """The input tensor name and the fetched tensor name of a regression signature.

    Raises:
      ServingError: INVALID_ARGUMENT for a structure Regress cannot serve.
    """
    check_method(signature, "regress", method_name_check)
    if len(signature.inputs) != 1:
        raise invalid_argument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise invalid_argument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise invalid_argument(f"No regression inputs found in SignatureDef: {signature}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise invalid_argument(f"No regression outputs found in SignatureDef: {signature}")
    return signature.inputs[REGRESS_INPUTS].name, [signature.outputs[REGRESS_OUTPUTS].name]


def classify_result(
    signature: meta_graph_pb2.SignatureDef, num_examples: int, by_name: Mapping[str, np.ndarray]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Checks the fetched classes/scores like TF Serving's PostProcessClassificationResult.

    Returns:
      (classes [n,k] or None, scores [n,k] or None).

    Raises:
      ServingError: INVALID_ARGUMENT for a rank, dtype or batch size TF Serving rejects.
    """
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
            raise invalid_argument(f"Expected {label} Tensor of {dtype}. Got: {tf_dtype_name(tensor)}")
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


def regress_result(num_examples: int, tensor: np.ndarray) -> np.ndarray:
    """Checks a fetched regression tensor ([n] or [n,1] float32) and returns it as [n].

    Raises:
      ServingError: INVALID_ARGUMENT for a shape, batch size or dtype TF Serving rejects.
    """
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
        raise invalid_argument(f"Expected output Tensor of DT_FLOAT.  Got: {tf_dtype_name(tensor)}")
    return tensor.reshape(num_examples)


def tf_dtype_name(array: np.ndarray) -> str:
    """The DT_ name of an array's dtype (numpy's name when TF has none)."""
    try:
        return types_pb2.DataType.Name(tensor_codec.tf_dtype_of(array))
    except TypeError:
        return str(array.dtype)


def fill_classifications(
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
