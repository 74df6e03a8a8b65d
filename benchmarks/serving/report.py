"""The serving benchmark's result: issue 8's table as Markdown, and its targets checked."""

from __future__ import annotations

import math

# Issue 8's targets (batching on, the shipped config, no thread flags).
C64_RATIO = {"bilstm": 0.75, "tfidf": 0.5}
C8_RATIO = 0.7
C1_EXTRA_MS = {"grpc": 0.4, "rest": 0.6}
SERVER_CPU_BEYOND_MODEL_MS = 0.2
RSS_GROWTH = 0.05


def _f(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _model_at(result: dict, batch: int) -> dict | None:
    return result["in_process"]["by_batch"].get(str(batch))


def annotate(result: dict) -> None:
    """Adds, per cell, its ratio to the in-process model and its CPU beyond the model's."""
    for cell in result["cells"].values():
        model = _model_at(result, cell["concurrency"])
        cell["vs_in_process_same_batch"] = cell["rate"] / model["docs_per_s"] if model else None
        cell["vs_in_process_best"] = cell["rate"] / result["in_process"]["best"]["docs_per_s"]
        if model and cell.get("server_cpu_ms_per_request") is not None:
            cell["cpu_beyond_model_ms"] = cell["server_cpu_ms_per_request"] - model["cpu_ms_per_doc"]
        else:
            cell["cpu_beyond_model_ms"] = None


def targets(result: dict) -> list[dict]:
    """Issue 8's targets as rows: what, the measured figure, met or not (None: not measured)."""
    cells, arch = result["cells"], result["arch"]
    rows: list[dict] = []

    def add(what: str, measured: str, met: bool | None) -> None:
        rows.append({"target": what, "measured": measured, "met": met})

    ratio = C64_RATIO.get(arch, C64_RATIO["bilstm"])
    for transport in ("grpc", "rest"):
        cell = cells.get(f"textserve/{transport}/64")
        if cell and cell["vs_in_process_same_batch"] is not None:
            value = cell["vs_in_process_same_batch"]
            add(f"{transport} c=64 ≥ {ratio}× in-process at batch 64", f"{value:.2f}×", value >= ratio)
    if arch == "bilstm":
        for transport in ("grpc", "rest"):
            cell = cells.get(f"textserve/{transport}/8")
            if cell and cell["vs_in_process_same_batch"] is not None:
                value = cell["vs_in_process_same_batch"]
                add(
                    f"{transport} c=8 ≥ {C8_RATIO}× in-process at batch 8", f"{value:.2f}×", value >= C8_RATIO
                )
    single = result["in_process"]["single_doc_p50_ms"]
    for transport, extra in C1_EXTRA_MS.items():
        cell = cells.get(f"textserve/{transport}/1")
        if cell:
            over = cell["p50_ms"] - single
            add(
                f"{transport} c=1 p50 ≤ in-process {single:.2f} ms + {extra} ms",
                f"{cell['p50_ms']:.2f} ms (+{over:.2f})",
                over <= extra,
            )
    for transport in ("grpc", "rest"):
        cell = cells.get(f"textserve/{transport}/64")
        if cell and cell["cpu_beyond_model_ms"] is not None:
            beyond = cell["cpu_beyond_model_ms"]
            add(
                f"{transport} c=64 server CPU beyond the model's ≤ {SERVER_CPU_BEYOND_MODEL_MS} ms/request",
                f"{beyond:.2f} ms",
                beyond <= SERVER_CPU_BEYOND_MODEL_MS,
            )
    memory = result.get("memory", {})
    if memory.get("rss_after_soak_mib"):
        growth = memory["rss_after_soak_mib"] / memory["rss_after_warmup_mib"] - 1
        add(
            f"RSS after {memory['soak_seconds']:.0f} s of c=64 within {RSS_GROWTH:.0%} of after warmup",
            f"{memory['rss_after_warmup_mib']:.0f} → {memory['rss_after_soak_mib']:.0f} MiB ({growth:+.1%})",
            abs(growth) <= RSS_GROWTH,
        )
    for peer in result.get("peers", {}):
        for concurrency in (8, 64):
            ours, theirs = cells.get(f"textserve/rest/{concurrency}"), cells.get(f"{peer}/rest/{concurrency}")
            if ours and theirs:
                add(
                    f"textserve REST ahead of {peer} at c={concurrency}",
                    f"{ours['rate']:.0f} vs {theirs['rate']:.0f} req/s",
                    ours["rate"] > theirs["rate"],
                )
    return rows


def markdown(result: dict) -> str:
    """The whole result as Markdown: in-process model, every cell, memory, targets."""
    model = result["in_process"]
    lines = [
        f"Model: `{result['arch']}` ({result['model']}); one {result['document_chars']}-character BBC "
        f"article per request; {result['rounds']} rounds of {result['seconds']:.0f} s cells, best round "
        f"kept; {result['machine']['cpus']} CPUs, load average {result['machine']['loadavg_before'][0]:.1f} "
        f"before / {result['machine']['loadavg_after'][0]:.1f} after.",
        "",
        "| in-process (`tf.saved_model.load`) | docs/s | CPU ms/doc |",
        "|---|---:|---:|",
    ]
    for size, row in sorted(model["by_batch"].items(), key=lambda item: int(item[0])):
        best = " (best)" if int(size) == model["best"]["batch"] else ""
        lines.append(f"| batch {size}{best} | {_f(row['docs_per_s'], 0)} | {_f(row['cpu_ms_per_doc'])} |")
    lines += [
        f"| single document p50 | {_f(model['single_doc_p50_ms'])} ms | |",
        "",
        "| server | transport | c | req/s | × in-process at batch = c | × in-process best | p50 ms | p99 ms "
        "| server CPU ms/req | beyond the model's ms/req | mean batch | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cell in result["cells"].values():
        lines.append(
            f"| {cell['server']} | {cell['transport']}{' (' + cell['client'] + ')' if cell.get('client') else ''} "
            f"| {cell['concurrency']} | {_f(cell['rate'], 0)} | {_f(cell['vs_in_process_same_batch'])} "
            f"| {_f(cell['vs_in_process_best'])} | {_f(cell['p50_ms'])} | {_f(cell['p99_ms'])} "
            f"| {_f(cell.get('server_cpu_ms_per_request'))} | {_f(cell.get('cpu_beyond_model_ms'))} "
            f"| {_f(cell.get('mean_batch'), 1)} | {cell['errors']} |"
        )
    memory = result.get("memory", {})
    if memory:
        lines += [
            "",
            f"textserve RSS: {_f(memory.get('rss_after_warmup_mib'), 0)} MiB after warmup, "
            f"{_f(memory.get('rss_after_soak_mib'), 0)} MiB after {memory.get('soak_seconds', 0):.0f} s of "
            f"REST c=64 ({memory.get('soak_requests', 0):,} requests).",
        ]
    for name, peer in result.get("peers", {}).items():
        lines.append(f"- {name}: {peer['batching']}; RSS {_f(peer.get('rss_mib'), 0)} MiB (process tree)")
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for row in result["targets"]:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['target']} | {row['measured']} | {met} |")
    return "\n".join(lines)
