"""One loaded SavedModel version: its own Graph and Session, run by tensor name.

TF Serving runs SavedModels through a C++ Session, and its own test models are
TF1-style graphs, so a version is loaded with the TF1 loader into a fresh
`tf.Graph` + `tf.compat.v1.Session` (this loads TF2 SavedModels too, and
`saved_model_half_plus_three`, which `tf.saved_model.load` rejects; see
TFS_CONTRACT.md §10.1). Runs go through callables made with
`Session._make_callable_from_options`, which, like the C++ session, does not
check feed shapes against the graph's static shapes (§10.2); one callable is
cached per (feeds, fetches) pair.

A run may carry a timeout, passed to TensorFlow as `RunOptions.timeout_in_ms`
(as TF Serving passes the request's remaining deadline), so a request whose
client gave up stops using CPU. The timeout lives in the callable's options, so
timeouts are rounded up to one of a few steps per doubling (at most ~19% over
the deadline) and one callable is cached per step.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence

import grpc
import numpy as np

from serving.errors import ServingError

# Timeout steps per doubling: 4 → each step is 2**0.25 ≈ 1.19× the previous one.
_TIMEOUT_STEPS_PER_DOUBLING = 4
# A run's timeout is never below this (a run cannot start and finish in less).
_MIN_TIMEOUT_MS = 1


def timeout_step_ms(timeout_s: float | None) -> int:
    """The run timeout a remaining deadline rounds up to, in ms (0 = no timeout).

    Args:
      timeout_s: seconds left, or None for no deadline.

    Returns:
      0 for None, else the smallest step ≥ the remaining time.
    """
    if timeout_s is None:
        return 0
    ms = max(timeout_s * 1000.0, _MIN_TIMEOUT_MS)
    exponent = math.ceil(math.log2(ms) * _TIMEOUT_STEPS_PER_DOUBLING)
    return max(_MIN_TIMEOUT_MS, math.ceil(2 ** (exponent / _TIMEOUT_STEPS_PER_DOUBLING)))


# TensorFlow's error codes are the canonical codes, numbered as gRPC numbers them.
_CODE_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}


def _tf():
    """Imports TensorFlow with the tf-text ops registered (as TF Serving links them)."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  registers the text ops SavedModels may use

    return tf


def session_config(
    intra_op_parallelism: int = 0,
    inter_op_parallelism: int = 0,
    session_parallelism: int = 0,
    config_file: str = "",
):
    """Builds the `tf.compat.v1.ConfigProto` every servable's session uses.

    Args:
      intra_op_parallelism: `--tensorflow_intra_op_parallelism` (0: TF decides).
      inter_op_parallelism: `--tensorflow_inter_op_parallelism` (0: TF decides).
      session_parallelism: `--tensorflow_session_parallelism`, used for both pools
        when the two specific flags are unset, as tensorflow_model_server does.
      config_file: `--tensorflow_session_config_file`, a text-format ConfigProto
        that the parallelism flags then override.

    Returns:
      The ConfigProto.

    Raises:
      serving.config_protos.TextProtoError: the config file does not parse.
    """
    from tensorflow.core.protobuf import config_pb2

    from serving import config_protos

    config = config_pb2.ConfigProto()
    if config_file:
        config = config_protos.parse_text_file(config_pb2.ConfigProto, config_file)
    if intra_op_parallelism or inter_op_parallelism:
        config.intra_op_parallelism_threads = intra_op_parallelism
        config.inter_op_parallelism_threads = inter_op_parallelism
    elif session_parallelism:
        config.intra_op_parallelism_threads = session_parallelism
        config.inter_op_parallelism_threads = session_parallelism
    return config


def serving_error_from_tf(error) -> ServingError:
    """Turns a `tf.errors.OpError` into a ServingError with the same code and TF's message."""
    code = _CODE_BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN)
    return ServingError(code, error.message)


def _dtype_name(dtype) -> str:
    """TensorFlow's C++ name of a dtype: DT_FLOAT → "float", DT_STRING → "string"."""
    from tensorflow.core.framework import types_pb2

    return types_pb2.DataType.Name(dtype.as_datatype_enum)[3:].lower()


def _tf_compatible(value: np.ndarray) -> np.ndarray:
    """numpy text arrays (bytes, str, object) all feed a DT_STRING tensor."""
    if value.dtype.kind in "SUO":
        return np.empty(0, dtype=object)
    return value


class Servable:
    """A SavedModel version loaded into its own Session.

    Attributes:
      name: the model name it is served under.
      version: its version number.
      path: the version directory.
      meta_graph_def: the loaded MetaGraphDef.
      signature_defs: every SignatureDef of the MetaGraph, including
        `__saved_model_init_op` of TF2 models, by key.
    """

    def __init__(self, name: str, version: int, path: str, tags: Sequence[str], config=None):
        """Loads the SavedModel at `path`.

        Args:
          name: model name.
          version: version number.
          path: the version directory (holding saved_model.pb).
          tags: the MetaGraph tag set (`--saved_model_tags`).
          config: a ConfigProto for the session (see `session_config`).

        Raises:
          ServingError: the SavedModel cannot be loaded (code from TF's error,
            NOT_FOUND when no saved_model.pb/.pbtxt is there).
        """
        tf = _tf()
        self.name = name
        self.version = version
        self.path = path
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph, config=config)
        from tensorflow.python.util import deprecation

        try:
            # The TF1 loader is deliberate (see module docstring); silence its notice.
            with self._graph.as_default(), deprecation.silence():
                self.meta_graph_def = tf.compat.v1.saved_model.loader.load(self._session, list(tags), path)
        except tf.errors.OpError as e:
            self._session.close()
            raise serving_error_from_tf(e) from e
        except (OSError, RuntimeError, ValueError) as e:
            # The loader raises OSError for a missing saved_model.pb and
            # RuntimeError for a tag set the file does not contain.
            self._session.close()
            code = grpc.StatusCode.NOT_FOUND if isinstance(e, OSError) else grpc.StatusCode.INVALID_ARGUMENT
            raise ServingError(
                code, f"Failed to load SavedModel at {path} with tags {{{','.join(tags)}}}: {e}"
            ) from e
        self.signature_defs: Mapping[str, object] = dict(self.meta_graph_def.signature_def)
        # feeds, fetches, timeout step → (callable, dtype name each feed expects)
        self._callables: dict[tuple[tuple[str, ...], tuple[str, ...], int], tuple[object, list[str]]] = {}
        self._callables_lock = threading.Lock()
        self._inflight = 0
        self._idle = threading.Condition()

    def __repr__(self) -> str:
        return f"Servable({self.name!r}, {self.version}, {self.path!r})"

    def _callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...], timeout_ms: int = 0):
        key = (feeds, fetches, timeout_ms)
        found = self._callables.get(key)
        if found is not None:
            return found
        from tensorflow.core.protobuf import config_pb2

        with self._callables_lock:
            found = self._callables.get(key)
            if found is None:
                options = config_pb2.CallableOptions(feed=list(feeds), fetch=list(fetches))
                if timeout_ms:
                    options.run_options.timeout_in_ms = timeout_ms
                tf = _tf()
                try:
                    expected = [_dtype_name(self._graph.get_tensor_by_name(n).dtype) for n in feeds]
                    found = (self._session._make_callable_from_options(options), expected)
                except tf.errors.OpError as e:
                    raise serving_error_from_tf(e) from e
                except (KeyError, ValueError, TypeError) as e:
                    # A tensor name that is not in the graph.
                    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from e
                self._callables[key] = found
        return found

    def run(
        self, feeds: Mapping[str, np.ndarray], fetches: Sequence[str], timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Runs the graph once, as TF Serving's C++ Session::Run would.

        Thread-safe; concurrent calls run concurrently.

        Args:
          feeds: tensor name (e.g. "x:0") → value.
          fetches: tensor names to return, in order.
          timeout_s: stop the run after this long (DEADLINE_EXCEEDED); None: no limit.

        Returns:
          One numpy array per fetch.

        Raises:
          ServingError: TensorFlow rejected the run, with TF's code and message
            (e.g. INVALID_ARGUMENT "Expects arg[0] to be float but string is provided").
        """
        names = tuple(feeds)
        if timeout_s is not None and timeout_s <= 0:
            raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
        fn, expected = self._callable(names, tuple(fetches), timeout_step_ms(timeout_s))
        tf = _tf()
        # The C++ session checks argument dtypes before running, with this wording.
        for index, name in enumerate(names):
            provided = _dtype_name(tf.as_dtype(_tf_compatible(feeds[name]).dtype))
            if provided != expected[index]:
                raise ServingError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{index}] to be {expected[index]} but {provided} is provided",
                )
        with self._idle:
            self._inflight += 1
        try:
            return list(fn(*(feeds[name] for name in names)))
        except tf.errors.OpError as e:
            raise serving_error_from_tf(e) from e
        except UnicodeDecodeError as e:
            # TF's status message quoted non-UTF-8 input bytes, so the Python
            # binding could not decode it; the cause is still the request's data.
            raise ServingError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Could not parse the input: " + e.object.decode("utf-8", errors="replace"),
            ) from e
        finally:
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no run is in progress; False if runs remain after `timeout_s`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout=timeout_s)

    def release(self) -> None:
        """Drops the cached callables so the Session can be freed.

        The Session itself closes when the last reference to this Servable goes
        away: a request that resolved it just before an unload still runs.
        """
        with self._callables_lock:
            self._callables.clear()
