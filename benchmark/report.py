"""Writers for benchmark results: where a result's files go, the header of its page, CSV,
Markdown tables and the Table 4 plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

from benchmark import machine, paper
from inference.folders import write_text_atomically
from training.reporting import cell


def results_base(folder: str | Path, kind: str, stamp: dict, device: str = "auto",
                 tag: str = "") -> Path:
    """A result's files without their suffix, ``<folder>/<kind>_<device>_<date>[_<tag>]``:
    what was measured, on which device (``machine.slug``) and when, so that a measurement
    on another machine or day never overwrites this one."""
    return Path(folder) / f"{kind}_{machine.slug(stamp, device)}{'_' + tag if tag else ''}"


def header(title: str, stamp: dict, module: str | None = None,
           argv: Sequence[str] | None = None) -> str:
    """The first lines of a results page: its title, the machine and time of the measurement,
    and, with ``module``, the command that made it (``argv`` default: this process's
    arguments), each ending in a newline."""
    lines = [f"# {title}", "", f"- machine: {machine.describe(stamp)}"]
    if module is not None:
        shown = machine.shown_command(sys.argv[1:] if argv is None else argv)
        lines.append(f"- command: `{' '.join(filter(None, ['python -m', module, shown]))}`")
    return "\n".join(lines) + "\n"


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple]) -> str:
    """A GitHub Markdown table; ``columns`` are ``(key, header[, format])`` tuples.

    Numeric columns (those with a format) are right-aligned; missing values are blank.
    """
    heads = [c[1] for c in columns]
    align = ["---:" if len(c) > 2 and c[2] else "---" for c in columns]
    lines = ["| " + " | ".join(heads) + " |", "|" + "|".join(align) + "|"]
    for row in rows:
        cells = [cell(row.get(c[0]), c[2] if len(c) > 2 else None).replace("|", "\\|")
                 for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def linear_fit(slices: Sequence[float], seconds: Sequence[float]) -> dict:
    """Least-squares ``seconds = fixed + per_slice * slices`` over the cases.

    Returns the fixed part (s), seconds per 100 slices, the fit's R^2 and the largest
    residual (s), so a table can say how well a straight line describes the cost.
    """
    points = [(float(z), float(t)) for z, t in zip(slices, seconds)
              if z is not None and t is not None]
    if len({z for z, _ in points}) < 2:
        raise ValueError("a linear fit needs cases with at least two different slice counts")
    n = len(points)
    mz = sum(z for z, _ in points) / n
    mt = sum(t for _, t in points) / n
    szz = sum((z - mz) ** 2 for z, _ in points)
    slope = sum((z - mz) * (t - mt) for z, t in points) / szz
    fixed = mt - slope * mz
    residuals = [t - (fixed + slope * z) for z, t in points]
    stt = sum((t - mt) ** 2 for _, t in points)
    r2 = 1 - sum(r * r for r in residuals) / stt if stt > 0 else 1.0
    return {"fixed_s": fixed, "per_100_slices_s": 100 * slope, "r2": r2,
            "max_residual_s": max(abs(r) for r in residuals), "cases": n}


def linear_fit_line(rows: Sequence[dict], key: str = "time_s") -> str:
    """One sentence: the fit of ``key`` against ``slices`` over ``rows`` (blank if impossible)."""
    try:
        fit = linear_fit([r.get("slices") for r in rows], [r.get(key) for r in rows])
    except ValueError:
        return ""
    return (f"Linear fit over {fit['cases']} cases: time = {fit['fixed_s']:.2f} s + "
            f"{fit['per_100_slices_s']:.2f} s per 100 slices (R^2 {fit['r2']:.3f}, largest "
            f"residual {fit['max_residual_s']:.2f} s)")


def write_results(base: Path, markdown: str | None = None, data: dict | None = None) -> Path:
    """A result's page ``<base>.md`` and its record ``<base>.json``, either left out when
    None; ``base`` from :func:`results_base`."""
    if markdown is not None:
        write_text_atomically(f"{base}.md", markdown)
    if data is not None:
        write_text_atomically(f"{base}.json", json.dumps(data, indent=1) + "\n")
    return base


def paper_markdown() -> str:
    """The paper's Table 4 as Markdown, with its source."""
    table = markdown_table(paper.table(), [
        ("slices", "slices (512x512xZ)", "d"), ("time_s", "running time (s)", ".2f"),
        ("max_gpu_mb", "max GPU (MB)", "d"), ("area_mb_s", "GPU memory-time area (MB*s)", "d")])
    return (f"{table}\nSource: {paper.SOURCE}. Only the first and the last area are known "
            "(blank: not reported in the text we have).\n")


def plot_table4(rows: Sequence[dict], path: str | Path, title: str, memory_label: str,
                ours_label: str = "ours") -> Path:
    """Running time, peak memory and memory-time area against slices, ours beside the paper's.

    ``rows`` need ``slices``, ``time_s``, ``max_mb`` and ``area_mb_s``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((r for r in rows if r.get("time_s") is not None), key=lambda r: r["slices"])
    z = [r["slices"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    known = [(s, a) for s, a in zip(paper.SLICES, paper.AREA_MB_S) if a is not None]
    panels = [
        ("running time (s)", "time_s", paper.SLICES, paper.RUNNING_TIME_S,
         paper.BUDGET_S, "challenge limit 45 s"),
        ("peak memory (MB)", "max_mb", paper.SLICES, paper.MAX_GPU_MB,
         paper.BUDGET_GPU_MB, "challenge limit 4 GB (GPU)"),
        ("memory-time area (MB*s)", "area_mb_s", [k[0] for k in known], [k[1] for k in known],
         None, None),
    ]
    for ax, (ylabel, key, pz, pv, limit, limit_label) in zip(axes, panels):
        # Known points only: no line through the areas the text does not give.
        style = "s--" if key != "area_mb_s" else "s"
        ax.plot(pz, pv, style, color="tab:gray", label=f"paper (GPU, {paper.GPU})")
        ax.plot(z, [r.get(key) for r in rows], "o-", color="tab:blue",
                label=f"{ours_label}" + ("" if key == "time_s" else f"\n({memory_label})"))
        if limit is not None:
            ax.axhline(limit, color="tab:red", lw=0.8, ls=":", label=limit_label)
        ax.set_xlabel("slices Z (512x512xZ)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
