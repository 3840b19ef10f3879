"""The run report: PNG plots and one self-contained ``report.html`` (opens offline).

Built from the files of a run directory (``metrics.jsonl``, ``summary.json``, ``config.yaml``), so
``adt report RUN_DIR`` can re-render any finished run. Images are embedded in the HTML as data
URIs and also written beside it as PNG files.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import yaml

REPORT_FILE = "report.html"
PLOTS = {
    "loss.png": "Loss per epoch",
    "accuracy.png": "Accuracy per epoch",
    "metrics.png": "Other metrics per epoch (yours, a train_step's)",
    "throughput.png": "Training throughput over time",
    "workers.png": "Mean step time per worker (stragglers stand out)",
    "memory.png": "Memory per worker: peak resident (GPU: allocated) and model state",
}


def read_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The (step, epoch) records of ``metrics.jsonl``, one per step, in step order."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    # After a restart, the steps since the last checkpoint are trained (and logged) again: the
    # last record of each (type, step) is the one that counts.
    latest = {(r["type"], r["step"]): r for r in records}
    ordered = sorted(latest.values(), key=lambda r: int(r["step"]))
    return (
        [r for r in ordered if r["type"] == "step"],
        [r for r in ordered if r["type"] == "epoch"],
    )


def write_report(run_dir: str | Path) -> Path:
    """(Re-)render the plots and ``report.html`` of ``run_dir``; returns the HTML's path.

    Raises:
        FileNotFoundError: ``run_dir`` has no ``summary.json`` (not a finished run).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    run_dir = Path(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    steps, epochs = read_records(run_dir)
    made = [
        name
        for name, fig in (
            *_curves(epochs),
            ("metrics.png", _other_metrics(epochs)),
            ("throughput.png", _throughput(steps + epochs)),
            ("workers.png", _step_time_per_rank(epochs)),
            ("memory.png", _memory_per_rank(summary)),
        )
        if fig is not None and _save(fig, run_dir / name)
    ]
    out = run_dir / REPORT_FILE
    out.write_text(_html(summary, config, made, run_dir))
    return out


def _save(fig: Any, path: Path) -> bool:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _axes(title: str) -> tuple[Any, Any]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _curves(epochs: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Loss and accuracy per epoch, train and validation (where every epoch has them)."""
    out = []
    xs = [e["epoch"] for e in epochs]
    for metric, name in (("loss", "loss.png"), ("accuracy", "accuracy.png")):
        series = {
            split: [float(e[f"{split}_{metric}"]) for e in epochs]
            for split in ("train", "val")
            if epochs and all(e.get(f"{split}_{metric}") is not None for e in epochs)
        }
        if series:
            fig, ax = _axes(PLOTS[name])
            for split, values in series.items():
                ax.plot(xs, values, marker="o", label=split)
            ax.set(xlabel="epoch", ylabel=metric)
            ax.legend()
            out.append((name, fig))
    return out


def _other_metrics(epochs: list[dict[str, Any]]) -> Any:
    """The user's metrics per epoch (None: there are none)."""
    others = sorted(
        k for k in (epochs[0] if epochs else {})
        if k.startswith(("train_", "val_")) and k.split("_", 1)[1] not in ("loss", "accuracy")
        and all(isinstance(e.get(k), (int, float)) for e in epochs)
    )  # fmt: skip
    if not others:
        return None
    fig, ax = _axes(PLOTS["metrics.png"])
    for key in others:
        ax.plot(
            [e["epoch"] for e in epochs], [float(e[key]) for e in epochs], marker="o", label=key
        )
    ax.set(xlabel="epoch", ylabel="value")
    ax.legend()
    return fig


def _throughput(records: list[dict[str, Any]]) -> Any:
    """Samples per second over the optimizer steps (None: no records)."""
    points = sorted((r["step"], r["samples_per_second"]) for r in records)
    if not points:
        return None
    fig, ax = _axes(PLOTS["throughput.png"])
    ax.plot([p[0] for p in points], [p[1] for p in points], marker=".")
    ax.set(xlabel="optimizer step", ylabel="samples/s (all workers)")
    return fig


def _step_time_per_rank(epochs: list[dict[str, Any]]) -> Any:
    """Each rank's mean step time over the epochs (None: no epochs)."""
    if not epochs:
        return None
    times = [
        sum(col) / len(col) for col in zip(*(e["worker_step_time_s"] for e in epochs), strict=True)
    ]
    fig, ax = _axes(PLOTS["workers.png"])
    ax.bar(range(len(times)), [t * 1000 for t in times])
    ax.set(xlabel="rank", ylabel="ms per step")
    ax.set_xticks(range(len(times)))
    ax.grid(False)
    ax.grid(alpha=0.3, axis="y")
    return fig


def _memory_per_rank(summary: dict[str, Any]) -> Any:
    """Each rank's peak memory beside its parameters + gradients + optimizer state (None: a
    summary without them)."""
    peaks = summary.get("peak_memory_per_worker_bytes") or []
    states = summary.get("model_state_bytes_per_worker") or []
    if not peaks or len(states) != len(peaks):
        return None
    fig, ax = _axes(PLOTS["memory.png"])
    ranks = range(len(peaks))
    ax.bar([r - 0.2 for r in ranks], [b / 2**20 for b in peaks], width=0.4, label="peak")
    ax.bar([r + 0.2 for r in ranks], [b / 2**20 for b in states], width=0.4, label="model state")
    ax.set(xlabel="rank", ylabel="MiB")
    ax.set_xticks(list(ranks))
    ax.legend()
    return fig


def _table(rows: dict[str, Any]) -> str:
    cells = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<table>{cells}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _html(summary: dict[str, Any], config: dict[str, Any], plots: list[str], run_dir: Path) -> str:
    headline = {
        k: summary.get(k)
        for k in (
            "model_name",
            "status",
            "device",
            "nodes_used",
            "epochs",
            "steps",
            "samples_seen",
            "final_loss",
            "samples_per_second",
            "wall_time_s",
            "weights_in_sync",
            "stopped_early",
        )
    }
    headline.update({k: v for k, v in (summary.get("metrics") or {}).items()})
    figures = []
    for name in plots:
        data = base64.b64encode((run_dir / name).read_bytes()).decode()
        figures.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{PLOTS[name]}" '
            f'data-file="{name}"><figcaption><a href="{name}">{PLOTS[name]}</a>'
            "</figcaption></figure>"
        )
    title = f"Run report: {html.escape(str(summary.get('model_name')))}"
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:1000px}"
        "table{border-collapse:collapse;margin-bottom:1.5em}"
        "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:14px}"
        "figure{display:inline-block;margin:0 1em 1em 0}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body><h1>{title}</h1>"
        f"<p>Run directory: <code>{html.escape(str(run_dir))}</code></p>"
        f"<h2>Summary</h2>{_table(headline)}<h2>Plots</h2>{''.join(figures)}"
        "<p>Compute versus communication time is not measured separately yet: per-worker "
        "step time includes the gradient all-reduce.</p>"
        f"<h2>Settings</h2>{_table(config)}</body></html>"
    )
