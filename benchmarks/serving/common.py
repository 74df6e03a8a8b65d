"""What every part of the serving benchmark shares: paths, the document, models, /proc readings."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "bbc"
# The shipped config, as a user would run it (issue 8 measures out of the box).
SHIPPED_BATCHING_CONFIG = REPO_ROOT / "serving" / "configs" / "batching.config"
MODEL_NAME = "bbc_news"
INPUT_KEY = "text"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"


def quiet_env() -> dict[str, str]:
    """The environment for child processes: TensorFlow's start-up notices off, unbuffered output."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def pick_document(data_dir: Path) -> str:
    """The BBC article of median length: every request of every contender carries this one document.

    One fixed document keeps the contenders comparable (the same bytes on every
    wire, the same work in the model); the BiLSTM pads or truncates to 200
    tokens, so its cost hardly depends on the text.
    """
    from pipeline.data import read_folder

    texts = sorted((record.text for record in read_folder(data_dir, "latin-1") if record.text), key=len)
    if not texts:
        raise SystemExit(f"no articles under {data_dir}; pass --data DIR (the BBC News folder)")
    return texts[len(texts) // 2]


def train_model(data_dir: Path, out_dir: Path, arch: str) -> Path:
    """Trains a model with the project CLI (`textserve train`); returns its export dir."""
    if (out_dir / "export").is_dir():
        print(f"reusing {out_dir / 'export'}", flush=True)
        return out_dir / "export"
    command = [sys.executable, "-m", "pipeline.cli", "train", "--data", str(data_dir), "--out", str(out_dir)]
    command += ["--set", f"model.arch={arch}"]
    print(f"training: {' '.join(command)}", flush=True)
    subprocess.run(command, cwd=REPO_ROOT, env=quiet_env(), check=True, stdout=subprocess.DEVNULL)
    return out_dir / "export"


def version_dir(export_dir: Path) -> Path:
    """The newest `<version>/` of an export (or the dir itself when it holds saved_model.pb)."""
    if (export_dir / "saved_model.pb").is_file():
        return export_dir
    versions = sorted(
        (int(p.name), p)
        for p in export_dir.iterdir()
        if p.name.isdigit() and (p / "saved_model.pb").is_file()
    )
    if not versions:
        raise SystemExit(f"{export_dir}: no <version>/saved_model.pb; pass --model RUN/export")
    return versions[-1][1]


def model_arch(version: Path) -> str:
    """`model.arch` from the config the pipeline saved inside the SavedModel ("unknown" without one)."""
    config = version / "assets.extra" / "config.toml"
    if not config.is_file():
        return "unknown"
    return str(tomllib.loads(config.read_text()).get("model", {}).get("arch", "unknown"))


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (q in 0..100); NaN for no values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (peer servers run worker processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int, tree: bool = False) -> float:
    """User + system CPU seconds of a process (and, with `tree`, of its descendants)."""
    total = 0.0
    for member in process_tree(pid) if tree else [pid]:
        try:
            fields = _stat_fields(member)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int, tree: bool = False) -> float:
    """Resident memory (VmRSS) in MiB of a process, or of its whole tree."""
    total = 0
    for member in process_tree(pid) if tree else [pid]:
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024.0
