"""What a training run leaves for people: a log file, a CSV of metrics per epoch, a PNG,
and the mean scores every summary of cases reports."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from inference.folders import atomic_temporary

METRICS_COLUMNS = ("epoch", "train_loss", "val_dsc", "val_nsd", "val_score", "lr", "temperature",
           "seconds", "foreground_fraction", "data_wait_fraction")


def add_log_file(path: Path) -> logging.Handler:
    """Log INFO and above to ``path`` whatever the console shows (--quiet keeps it quiet)."""
    root = logging.getLogger()
    for existing in root.handlers:
        if existing.level == logging.NOTSET:
            existing.setLevel(root.level)
    root.setLevel(min(root.level, logging.INFO))
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def mean_scores(rows: list[dict], keys=("dsc", "nsd")) -> dict[str, float]:
    """The mean of each of ``keys`` over the per-case ``rows`` (numbers or their text, as a
    CSV gives them); NaN where there is no row."""
    return {key: float(np.mean([float(row[key]) for row in rows])) if rows else math.nan
            for key in keys}


def cell(value, fmt: str | None = None) -> str:
    """One table cell as text: empty for None or NaN, ``fmt`` applied to numbers, else str."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if fmt and isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows as CSV with a header; ``columns`` fixes the order (default: the first row's keys).

    Missing values are empty cells; floats keep full precision. The file appears whole or
    not at all. The trainer's ``metrics.csv`` and every benchmark's CSV are written here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(columns or (rows[0].keys() if rows else []))
    with atomic_temporary(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([cell(row.get(c)) for c in columns])
    return path


def plot_curves(path: Path, history: list[dict]) -> None:
    """Training loss and validation DSC/NSD against the epoch (matplotlib, Agg)."""
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("Dice + CE")
    ax1.legend()
    for key in ("val_dsc", "val_nsd", "val_score"):
        values = [r.get(key, math.nan) for r in history]
        if any(isinstance(v, float) and not math.isnan(v) for v in values):
            ax2.plot(epochs, values, label=key.replace("val_", "validation "))
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    if ax2.lines:
        ax2.legend()
    else:
        ax2.text(0.5, 0.5, "no validation yet", ha="center", va="center",
                 transform=ax2.transAxes)
    fig.tight_layout()
    try:
        with atomic_temporary(path, keep_suffix=True) as temporary:
            fig.savefig(temporary, dpi=100)
    finally:
        plt.close(fig)
