"""Checks that the pinned TF Serving image's TensorFlow loads our export and answers like ours.

    python -m serving.compat.check_runtime                       # what CI runs
    python -m serving.compat.check_runtime --export runs/bbc/export
    python -m serving.compat.check_runtime --help

No Docker engine is needed. The image pin is read from Dockerfile.serving
(`ARG TF_SERVING_VERSION`), and `image_runtimes.RUNTIMES` names the
TensorFlow and tensorflow-text releases that image's `tensorflow_model_server`
is built from. Those wheels are installed from PyPI into a throw-away venv
outside the repository (reused while its versions match), and
`c_api_runner.py` runs there: it registers tensorflow-text's kernels, loads
the export with TensorFlow's C++ SavedModel loader through the C API
(`TF_LoadSessionFromSavedModel`, as TF Serving does) and replays
`serving_default`, `classify` and the warmup records. The same requests are
answered here by this process's TensorFlow (the exporter's), and the check
fails on an op the image does not register, a load or run error, any label
disagreement, or probabilities further apart than `--tolerance`. It prints
max |Δp|.

Without `--export`, it trains two small models (BiLSTM and TF-IDF) on a
synthetic corpus with `textserve train`, whose vocabulary includes text that
Unicode normalisation changes between ICU releases.

Exit status: 0 when every export passes, 1 when one fails, 2 for usage errors.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import importlib.metadata
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_DOCKERFILE = _REPO / "Dockerfile.serving"
DEFAULT_TOLERANCE = 1e-4  # float32 rounding between TF releases is ~1e-7; ICU drift is ~1e-2
RUNNER = Path(__file__).with_name("c_api_runner.py")
_MARKER = "textserve-runtime.json"  # written last: a venv without it is half-built

# Small models that train in seconds; the vocabulary is what matters here.
ARCH_OVERRIDES = {
    "bilstm": [
        "model.arch=bilstm",
        "preprocessing.max_tokens=300",
        "preprocessing.sequence_length=32",
        "model.embedding_dim=16",
        "model.lstm_units=8",
        "model.dense_units=8",
        "train.epochs=4",
        "train.batch_size=16",
    ],
    "tfidf": ["model.arch=tfidf", "preprocessing.max_tokens=300", "train.epochs=10", "train.batch_size=16"],
}

# Class vocabularies of the synthetic corpus. Each class owns tokens that only
# some ICU releases produce from the probe documents (e.g. "123" from the
# Unicode 13 digits 🯱🯲🯳, "ꟁ" from case-folding the Unicode 14 "Ꟁ"), so a
# runtime whose normalisation differs gives measurably different answers.
_CLASS_WORDS = {
    "markets": ["shares", "profit", "bank", "investors", "rose", "123", "45", "bond", "股票", "利润"],
    "football": ["striker", "goal", "cup", "penalty", "keeper", "гол", "кубок", "league", "final", "match"],
    "space": ["rocket", "orbit", "launch", "moon", "astronauts", "mission", "ꟁ", "ꟑ", "火箭", "galaxy"],
    "cooking": ["garlic", "onion", "butter", "bread", "oven", "simmer", "café", "finance", "recipe", "flour"],
}
_FILLER = ["the", "report", "said", "today", "new", "people", "year", "week", "time", "after"]


class CheckError(Exception):
    """A failure the check reports in one line and exits 1 for."""


def write_corpus(root: Path, per_class: int = 30, seed: int = 13) -> Path:
    """Writes a class-folder corpus of synthetic documents for `textserve train`."""
    rng = random.Random(seed)
    for label, words in _CLASS_WORDS.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tokens = [
                rng.choice(words) if rng.random() < 0.6 else rng.choice(_FILLER)
                for _ in range(rng.randint(8, 30))
            ]
            (root / label / f"{i:03d}.txt").write_text(" ".join(tokens) + ".\n", "utf-8")
    return root


def train_export(arch: str, work_dir: Path, verbose: bool) -> Path:
    """Trains one small model with `textserve train` and returns its version directory."""
    corpus = work_dir / "corpus"
    if not corpus.is_dir():
        write_corpus(corpus)
    run_dir = work_dir / f"run-{arch}"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "train",
        "--data",
        str(corpus),
        "--out",
        str(run_dir),
        "--quiet",
    ]
    for override in ARCH_OVERRIDES[arch]:
        command += ["--set", override]
    completed = subprocess.run(command, capture_output=not verbose, text=True)
    if completed.returncode != 0:
        tail = "\n".join((completed.stderr or "").splitlines()[-15:])
        raise CheckError(
            f"`textserve train` of the {arch} model failed (exit {completed.returncode}):\n{tail}"
        )
    return run_dir / "export" / "1"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # two checks at once build the venv once
        yield


def ensure_venv(
    requirements: Sequence[str], venv_dir: Path, base_python: str, verbose: bool
) -> tuple[Path, bool]:
    """Creates (or reuses) the throw-away venv holding the image's TensorFlow.

    Args:
      requirements: pip requirements, e.g. ["tensorflow==2.20.0", "tensorflow-text==2.20.0"].
      venv_dir: where the venv lives; replaced when it holds other versions.
      base_python: the interpreter to create it with.
      verbose: show pip's output.

    Returns:
      (the venv's python, whether an existing venv was reused).

    Raises:
      CheckError: when the venv cannot be created or pip cannot install the wheels.
    """
    python = venv_dir / "bin" / "python"
    wanted = {"requirements": list(requirements)}
    with _locked(venv_dir.with_name(venv_dir.name + ".lock")):
        marker = venv_dir / _MARKER
        if python.exists() and _read_marker(marker) == wanted:
            return python, True
        if venv_dir.exists() and any(venv_dir.iterdir()) and not (venv_dir / "pyvenv.cfg").is_file():
            raise CheckError(f"{venv_dir} exists and is not a venv; pass --venv with a path of its own")
        shutil.rmtree(venv_dir, ignore_errors=True)  # half-built, or other versions
        print(f"installing {' '.join(requirements)} into {venv_dir} (about a minute) ...", flush=True)
        steps = [
            [base_python, "-m", "venv", str(venv_dir)],
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
        ]
        for step in steps:
            try:
                completed = subprocess.run(step, capture_output=not verbose, text=True)
            except OSError as error:
                raise CheckError(f"cannot run {step[0]}: {error.strerror}") from error
            if completed.returncode != 0:
                tail = "\n".join((completed.stderr or "").splitlines()[-10:])
                raise CheckError(f"`{' '.join(step)}` failed (exit {completed.returncode}):\n{tail}")
        marker.write_text(json.dumps(wanted) + "\n", "utf-8")
    return python, False


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None


def run_worker(python: Path, job: dict, work_dir: Path) -> dict:
    """Runs `c_api_runner.py` under the image runtime's python and returns its result."""
    job_path, result_path = work_dir / "job.json", work_dir / "result.json"
    job_path.write_text(json.dumps(job), "utf-8")
    result_path.unlink(missing_ok=True)
    env = {"PATH": os.defpath, "TF_CPP_MIN_LOG_LEVEL": "2", "HOME": str(work_dir)}
    completed = subprocess.run(
        [str(python), "-I", str(RUNNER), str(job_path), str(result_path)],
        capture_output=True,
        text=True,
        env=env,
    )
    if completed.returncode != 0 or not result_path.is_file():
        # A crash inside TensorFlow (an ABI mismatch, an abort) ends the process without a result.
        tail = "\n".join(completed.stderr.splitlines()[-15:])
        raise CheckError(
            f"the C API runner under {python} exited {completed.returncode} without a result:\n{tail}"
        )
    return json.loads(result_path.read_text("utf-8"))


@dataclass
class ExportReport:
    """What the check found for one export."""

    export: str
    passed: bool
    lines: list[str]
    max_delta: float | None
    summary: dict


def check_export(
    version_dir: Path,
    python: Path,
    work_dir: Path,
    tolerance: float,
    load_text_ops: bool,
    expected_versions: tuple[str, str] | None = None,
) -> ExportReport:
    """Loads one export under the image runtime and compares it with this process's answers.

    Args:
      version_dir: the export version to check.
      python: the interpreter whose TensorFlow plays the image's.
      work_dir: where job and result files go.
      tolerance: the largest |Δp| allowed.
      load_text_ops: register tensorflow-text's kernels first, as TF Serving links them.
      expected_versions: (tensorflow, tensorflow-text) the runtime must report, if known.

    Returns:
      The findings; `passed` is False on any failure described in the module docstring.
    """
    from serving.compat import probe  # TensorFlow is imported only once there is work

    try:
        calls = probe.build_calls(version_dir, probe.DOCUMENTS)
    except probe.ProbeError as error:
        raise CheckError(str(error)) from error
    result = run_worker(python, probe.worker_job(version_dir, calls, load_text_ops), work_dir)
    summary: dict = {"export": str(version_dir)}
    for key in ("tensorflow", "tensorflow_text", "load_seconds", "error"):
        if key in result:
            summary[key] = result[key]
    lines = []
    missing: list[str] = []
    if "op_list" in result:
        missing = probe.unknown_ops(probe.read_meta_graph(version_dir), base64.b64decode(result["op_list"]))
        summary["unknown_ops"] = missing
    if missing:
        lines.append(
            f"FAIL unknown op(s) {', '.join(missing)}: the image's TensorFlow does not register them"
        )
        failed_libraries = {k: v for k, v in result.get("op_libraries", {}).items() if v != "ok"}
        if failed_libraries:
            lines.append(f"     tensorflow-text libraries that did not load: {failed_libraries}")
    if "error" in result:
        failure = result["error"]
        lines.append(f"FAIL {failure['stage']}: {failure['message'].strip().splitlines()[0][:400]}")
        return ExportReport(str(version_dir), False, lines, None, summary)
    found = (result["tensorflow"], result["tensorflow_text"])
    lines.append(
        f"loaded by TF_LoadSessionFromSavedModel of TensorFlow {found[0]} (tensorflow-text {found[1]}) "
        f"in {result['load_seconds']:.2f} s"
    )
    if expected_versions and found != expected_versions:
        lines.append(f"FAIL the runtime has {found}, not the image's {expected_versions}; delete its venv")
        return ExportReport(str(version_dir), False, lines, None, summary)
    comparison = probe.compare(
        calls, probe.run_reference(version_dir, calls), probe.decode_worker_runs(result, calls), tolerance
    )
    for call in comparison.calls:
        agree = call.rows - len(call.disagreements)
        worst = f" ({call.worst_row})" if call.max_delta > 0 else ""
        lines.append(
            f"  {call.name:<18} rows agree {agree:>2}/{call.rows:<2}  max |Δp| {call.max_delta:.1e}{worst}"
        )
    for disagreement in comparison.disagreements[:10]:
        lines.append(f"FAIL label disagreement: {disagreement}")
    if comparison.max_delta > tolerance:
        lines.append(f"FAIL max |Δp| {comparison.max_delta:.2e} exceeds --tolerance {tolerance:g}")
    summary.update(max_delta=comparison.max_delta, disagreements=comparison.disagreements)
    passed = not missing and comparison.passed
    return ExportReport(str(version_dir), passed, lines, comparison.max_delta, summary)


def default_venv_root(environ: dict[str, str]) -> Path:
    """$XDG_CACHE_HOME/textserve/tf-serving-runtime, else ~/.cache/textserve/tf-serving-runtime."""
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "textserve" / "tf-serving-runtime"


def build_parser(venv_root: Path) -> argparse.ArgumentParser:
    """The command line of the check (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.compat.check_runtime",
        description="Load the export with the TensorFlow and tensorflow-text the pinned TF Serving image "
        "(Dockerfile.serving) is built on, through TensorFlow's C API as TF Serving does, and compare its "
        "answers with this process's TensorFlow.",
    )
    parser.add_argument("--dockerfile", type=Path, default=DEFAULT_DOCKERFILE, help="default: %(default)s")
    parser.add_argument(
        "--export",
        action="append",
        type=Path,
        metavar="PATH",
        help="export or version directory to check (repeatable); default: train small BiLSTM and TF-IDF models",
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest |Δp| allowed (default: %(default)g)",
    )
    parser.add_argument(
        "--venv", type=Path, help=f"the throw-away venv (default: {venv_root}/<release>-py<X.Y>)"
    )
    parser.add_argument(
        "--runtime-python",
        type=Path,
        metavar="PYTHON",
        help="run the C API runner with this interpreter instead of the venv (its TensorFlow is used as is)",
    )
    parser.add_argument(
        "--no-text-ops",
        action="store_true",
        help="do not register tensorflow-text kernels (a TF Serving build without them)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the findings as JSON")
    parser.add_argument(
        "--work-dir", type=Path, help="keep trained exports and job files here (default: a temp dir)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show pip's and training's output")
    return parser


def _version_dir(path: Path) -> Path:
    if (path / "saved_model.pb").is_file():
        return path
    versions = sorted(
        (int(p.name), p) for p in path.glob("[0-9]*") if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if not versions:
        raise CheckError(
            f"{path}: no saved_model.pb and no numbered version directories; pass RUN/export or RUN/export/<N>"
        )
    return versions[-1][1]


def run(args: argparse.Namespace, venv_root: Path) -> int:
    """Runs the check as parsed from the command line; returns the exit status."""
    from serving.compat.image_runtimes import PinError, read_pin, runtime_for

    started = time.monotonic()
    try:
        release = read_pin(args.dockerfile)
        runtime = runtime_for(release)
    except PinError as error:
        print(f"check_runtime: FAIL {error}", file=sys.stderr)
        return 1
    print(
        f"TF Serving {release} ({args.dockerfile.name}): TensorFlow {runtime.tensorflow}, tensorflow-text "
        f"{runtime.image_tensorflow_text} (ICU {runtime.icu}); reproduced with {' '.join(runtime.requirements)}"
    )
    with contextlib.ExitStack() as stack:
        work_dir = args.work_dir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="textserve-compat-"))
        )
        work_dir.mkdir(parents=True, exist_ok=True)
        try:
            if args.runtime_python:
                python = args.runtime_python
                print(f"runtime: {python} (as given: its own TensorFlow plays the image's)")
            else:
                tag = f"{release}-py{sys.version_info.major}.{sys.version_info.minor}"
                python, reused = ensure_venv(
                    runtime.requirements, args.venv or venv_root / tag, sys.executable, args.verbose
                )
                print(f"runtime: {python.parent.parent} ({'reused' if reused else 'created'})")
            exports = [(str(p), _version_dir(p)) for p in args.export or []]
            for arch in [] if args.export else list(ARCH_OVERRIDES):
                exports.append(
                    (f"{arch} (trained on a synthetic corpus)", train_export(arch, work_dir, args.verbose))
                )
            reports = []
            for label, version_dir in exports:
                expected = None if args.runtime_python else (runtime.tensorflow, runtime.tensorflow_text)
                report = check_export(
                    version_dir, python, work_dir, args.tolerance, not args.no_text_ops, expected
                )
                reports.append(report)
                print(f"{'PASS' if report.passed else 'FAIL'} {label}")
                print("\n".join(f"  {line}" for line in report.lines))
        except CheckError as error:
            print(f"check_runtime: FAIL {error}", file=sys.stderr)
            return 1
    deltas = [r.max_delta for r in reports if r.max_delta is not None]
    passed = all(r.passed for r in reports)
    verdict = "PASS" if passed else "FAIL"
    overall = f"max |Δp| {max(deltas):.2e}" if deltas else "no answers compared"
    here = importlib.metadata.version("tensorflow")
    seconds = time.monotonic() - started
    print(
        f"{verdict}: TF Serving {release} vs TensorFlow {here} here, {len(reports)} export(s), {overall} ({seconds:.0f} s)"
    )
    if args.json:
        findings = {
            "tf_serving": release,
            "requirements": runtime.requirements,
            "passed": passed,
            "exports": [r.summary for r in reports],
        }
        args.json.write_text(json.dumps(findings, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return 0 if passed else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: builds the options (the cache location from the environment) and runs the check."""
    venv_root = default_venv_root(dict(os.environ))
    args = build_parser(venv_root).parse_args(argv)
    if not args.verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported: no C++ log noise
    return run(args, venv_root)


if __name__ == "__main__":
    sys.exit(main())
