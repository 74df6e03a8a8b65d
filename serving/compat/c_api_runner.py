"""Runs a SavedModel through TensorFlow's C API, the way tensorflow_model_server does.

    <venv>/bin/python -I c_api_runner.py JOB.json RESULT.json

This file runs under *another* TensorFlow than the project's: the one the
pinned TF Serving image is built on, installed in a throw-away venv by
`check_runtime.py`. It therefore uses the standard library only and never
imports TensorFlow's Python package: it opens the wheel's shared libraries
with ctypes, registers tensorflow-text's kernels with `TF_LoadLibrary` (TF
Serving links them into its binary), loads the export with
`TF_LoadSessionFromSavedModel` (the C++ SavedModel loader TF Serving's
SavedModelBundle uses) and runs `TF_SessionRun` on serialized TensorProtos.

JOB.json:    {"export_dir": str, "tags": [str], "load_text_ops": bool,
              "runs": [{"name": str, "feeds": {"op:0": base64 TensorProto},
                        "fetches": ["op:0", ...]}]}
RESULT.json: {"tensorflow": str, "tensorflow_text": str, "op_libraries": {...},
              "op_list": base64 OpList, "load_seconds": float,
              "runs": [{"name": str, "outputs": [{"dtype": int, "shape": [int],
                        "values": [...]}]}]}
             or {"error": {"stage": "load" | "run" | ..., "message": str}}.
String values come back base64-encoded; numbers as JSON numbers.
"""

from __future__ import annotations

import base64
import ctypes
import importlib.metadata
import importlib.util
import json
import os
import struct
import sys
import time
from pathlib import Path
from typing import Any

# TF_DataType codes (tensorflow/c/tf_datatype.h) → struct format of one element.
_NUMERIC_FORMATS = {
    1: "f",
    2: "d",
    3: "i",
    4: "B",
    5: "h",
    6: "b",
    9: "q",
    10: "?",
    17: "H",
    22: "I",
    23: "Q",
}
_TF_STRING = 7
_TSTRING_SIZE = 24  # sizeof(TF_TString): every string element of a tensor's buffer


class _Buffer(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("length", ctypes.c_size_t), ("deallocator", ctypes.c_void_p)]


class _Output(ctypes.Structure):
    _fields_ = [("oper", ctypes.c_void_p), ("index", ctypes.c_int)]


_OutputPtr, _PtrPtr = ctypes.POINTER(_Output), ctypes.POINTER(ctypes.c_void_p)


class StageError(Exception):
    """A failure at one stage of the check, reported to the caller as data."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise StageError("setup", f"package {name} is not installed in {sys.prefix}")
    return Path(next(iter(spec.submodule_search_locations)))


class CApi:
    """The few TensorFlow C API functions the check needs, typed for ctypes."""

    def __init__(self, tensorflow_dir: Path):
        self._functions: dict[str, Any] = {}
        flags = os.RTLD_NOW | os.RTLD_GLOBAL
        framework = ctypes.CDLL(str(tensorflow_dir / "libtensorflow_framework.so.2"), mode=flags)
        cc = ctypes.CDLL(str(tensorflow_dir / "libtensorflow_cc.so.2"), mode=flags)
        p, c_int, c_size, c_char_p = ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p
        signatures = {
            "TF_Version": (c_char_p, []),
            "TF_NewStatus": (p, []),
            "TF_GetCode": (c_int, [p]),
            "TF_Message": (c_char_p, [p]),
            "TF_LoadLibrary": (p, [c_char_p, p]),
            "TF_GetAllOpList": (ctypes.POINTER(_Buffer), []),
            "TF_NewBuffer": (ctypes.POINTER(_Buffer), []),
            "TF_NewBufferFromString": (ctypes.POINTER(_Buffer), [c_char_p, c_size]),
            "TF_DeleteBuffer": (None, [ctypes.POINTER(_Buffer)]),
            "TF_NewGraph": (p, []),
            "TF_NewSessionOptions": (p, []),
            "TF_LoadSessionFromSavedModel": (
                p,
                [p, p, c_char_p, ctypes.POINTER(c_char_p), c_int, p, ctypes.POINTER(_Buffer), p],
            ),
            "TF_GraphOperationByName": (p, [p, c_char_p]),
            # session, run options, inputs, input values, n inputs, outputs, output values,
            # n outputs, target operations, n targets, run metadata, status
            "TF_SessionRun": (
                None,
                [p, p, _OutputPtr, _PtrPtr, c_int, _OutputPtr, _PtrPtr, c_int, p, c_int, p, p],
            ),
            "TF_AllocateTensor": (p, [c_int, ctypes.POINTER(ctypes.c_int64), c_int, c_size]),
            "TF_TensorFromProto": (None, [ctypes.POINTER(_Buffer), p, p]),
            "TF_DeleteTensor": (None, [p]),
            "TF_TensorType": (c_int, [p]),
            "TF_NumDims": (c_int, [p]),
            "TF_Dim": (ctypes.c_int64, [p, c_int]),
            "TF_TensorElementCount": (ctypes.c_int64, [p]),
            "TF_TensorData": (p, [p]),
            "TF_TensorByteSize": (c_size, [p]),
            "TF_StringGetDataPointer": (p, [p]),
            "TF_StringGetSize": (c_size, [p]),
        }
        for name, (restype, argtypes) in signatures.items():
            function = getattr(cc, name, None) or getattr(framework, name)
            function.restype, function.argtypes = restype, argtypes
            self._functions[name] = function

    def __getattr__(self, name: str) -> Any:
        """`api.TF_Version()` calls the typed C function of that name."""
        try:
            return self.__dict__["_functions"][name]
        except KeyError:
            raise AttributeError(f"the check does not bind {name} of TensorFlow's C API") from None

    def check(self, status, stage: str) -> None:
        """Raises StageError when `status` holds an error."""
        if self.TF_GetCode(status) != 0:
            raise StageError(stage, self.TF_Message(status).decode("utf-8", "replace"))


def load_op_libraries(api: CApi, status) -> dict[str, str]:
    """Registers every tensorflow-text kernel library, as TF Serving links them all in.

    Returns:
      library file name → "ok" or the loader's error (a library the export
      does not need may fail; a missing op then shows up in the op check).
    """
    loaded = {}
    for library in sorted((_package_dir("tensorflow_text") / "python" / "ops").glob("*.so")):
        api.TF_LoadLibrary(str(library).encode(), status)
        code = api.TF_GetCode(status)
        loaded[library.name] = "ok" if code == 0 else api.TF_Message(status).decode("utf-8", "replace")
    return loaded


def _to_output(api: CApi, graph, name: str, stage: str) -> _Output:
    op_name, _, index = name.rpartition(":")
    oper = api.TF_GraphOperationByName(graph, op_name.encode())
    if not oper:
        raise StageError(stage, f"the loaded graph has no operation {op_name!r} (tensor {name})")
    return _Output(oper, int(index))


def _tensor_from_proto(api: CApi, serialized: bytes, status):
    tensor = api.TF_AllocateTensor(1, None, 0, 4)  # a float scalar, replaced by the proto's contents
    buffer = api.TF_NewBufferFromString(serialized, len(serialized))
    try:
        api.TF_TensorFromProto(buffer, tensor, status)
        api.check(status, "input")
    finally:
        api.TF_DeleteBuffer(buffer)
    return tensor


def _tensor_to_json(api: CApi, tensor) -> dict:
    dtype = api.TF_TensorType(tensor)
    shape = [api.TF_Dim(tensor, i) for i in range(api.TF_NumDims(tensor))]
    count = api.TF_TensorElementCount(tensor)
    data = api.TF_TensorData(tensor)
    if dtype == _TF_STRING:
        values = []
        for i in range(count):
            element = data + i * _TSTRING_SIZE
            raw = ctypes.string_at(api.TF_StringGetDataPointer(element), api.TF_StringGetSize(element))
            values.append(base64.b64encode(raw).decode("ascii"))
    elif dtype in _NUMERIC_FORMATS:
        raw = ctypes.string_at(data, api.TF_TensorByteSize(tensor))
        values = list(struct.unpack(f"={count}{_NUMERIC_FORMATS[dtype]}", raw))  # native layout
    else:
        raise StageError("output", f"output dtype {dtype} is not one the check decodes")
    return {"dtype": dtype, "shape": shape, "values": values}


def run_job(job: dict, result: dict) -> None:
    """Loads the export and runs every requested signature call; see the module docstring.

    Fills `result` as it goes, so that after a failure it still tells what
    was found before it (versions, the op registry).
    """
    api = CApi(_package_dir("tensorflow"))
    status = api.TF_NewStatus()
    result["tensorflow"] = api.TF_Version().decode()
    result["tensorflow_text"] = importlib.metadata.version("tensorflow-text")
    result["op_libraries"] = load_op_libraries(api, status) if job.get("load_text_ops", True) else {}
    op_list = api.TF_GetAllOpList()
    result["op_list"] = base64.b64encode(
        ctypes.string_at(op_list.contents.data, op_list.contents.length)
    ).decode()
    api.TF_DeleteBuffer(op_list)

    graph, meta_graph = api.TF_NewGraph(), api.TF_NewBuffer()
    tags = (ctypes.c_char_p * len(job["tags"]))(*[t.encode() for t in job["tags"]])
    started = time.perf_counter()
    session = api.TF_LoadSessionFromSavedModel(
        api.TF_NewSessionOptions(),
        None,
        job["export_dir"].encode(),
        tags,
        len(job["tags"]),
        graph,
        meta_graph,
        status,
    )
    api.check(status, "load")
    result["load_seconds"] = round(time.perf_counter() - started, 3)

    result["runs"] = []
    for run in job["runs"]:
        stage = f"run {run['name']}"
        feed_names = list(run["feeds"])
        inputs = (_Output * len(feed_names))(*[_to_output(api, graph, n, stage) for n in feed_names])
        values = (ctypes.c_void_p * len(feed_names))(
            *[_tensor_from_proto(api, base64.b64decode(run["feeds"][n]), status) for n in feed_names]
        )
        fetches = (_Output * len(run["fetches"]))(*[_to_output(api, graph, n, stage) for n in run["fetches"]])
        outputs = (ctypes.c_void_p * len(run["fetches"]))()
        api.TF_SessionRun(
            session,
            None,
            inputs,
            values,
            len(feed_names),
            fetches,
            outputs,
            len(run["fetches"]),
            None,
            0,
            None,
            status,
        )
        for tensor in values:
            api.TF_DeleteTensor(tensor)
        api.check(status, stage)
        decoded = [_tensor_to_json(api, tensor) for tensor in outputs]
        for tensor in outputs:
            api.TF_DeleteTensor(tensor)
        result["runs"].append({"name": run["name"], "outputs": decoded})


def main(argv: list[str]) -> int:
    """Reads the job, runs it, writes the result; the exit code is 0 even for a check failure."""
    if len(argv) != 2 or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    job = json.loads(Path(argv[0]).read_text("utf-8"))
    result: dict = {}
    try:
        run_job(job, result)
    except StageError as error:
        result["error"] = {"stage": error.stage, "message": str(error)}
    except OSError as error:  # a shared library that does not load
        result["error"] = {"stage": "setup", "message": str(error)}
    Path(argv[1]).write_text(json.dumps(result), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
