"""The peer comparison's results: the CSV's columns, per-case medians and ratios, the Markdown."""

from __future__ import annotations

import statistics
from importlib import metadata

from benchmark import report
from benchmark.machine import shown_command, weights_note
from benchmark.peers import nnunet_model

CSV_COLUMNS = ["case", "slices", "round", "tool", "wall_s", "max_mb", "idle_mb", "exit_code"]
TABLE_COLUMNS = [("case", "case"), ("slices", "slices", "d"),
                 ("ours_s", "ours, median (s)", ".2f"), ("ours_range", "ours, range (s)"),
                 ("nnunet_s", "nnU-Net, median (s)", ".2f"),
                 ("nnunet_range", "nnU-Net, range (s)"),
                 ("ratio", "nnU-Net / ours", ".1f"),
                 ("round_ratios", "per round"),
                 ("ours_max_mb", "ours, max (MB)", ".0f"),
                 ("nnunet_max_mb", "nnU-Net, max (MB)", ".0f")]
RUN_COLUMNS = [("round", "round", "d"), ("case", "case"), ("tool", "tool"),
               ("wall_s", "wall (s)", ".2f"), ("max_mb", "max (MB)", ".0f"),
               ("idle_mb", "idle (MB)", ".0f"), ("exit_code", "exit code", "d")]
PACKAGES = ("nnunetv2", "dynamic-network-architectures", "torch", "numpy", "scipy",
            "SimpleITK", "onnxruntime")


def _range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else ""


def per_case(rows: list[dict]) -> list[dict]:
    """Per case: each tool's median and range of wall-clock over its good runs, its largest
    memory reading, nnU-Net's median over ours and the range of the per-round ratios.

    A run counts when it exited 0 with its mask on the input's grid (``ok``); rows read
    back from a CSV have no ``ok`` and count when their exit code is 0.
    """
    good = [r for r in rows if r.get("ok", int(r["exit_code"]) == 0)]
    out = []
    for case, slices in sorted({(r["case"], int(r["slices"])) for r in rows},
                               key=lambda k: (k[1], k[0])):
        entry = {"case": case, "slices": slices}
        walls = {}
        for tool in ("ours", "nnunet"):
            mine = [r for r in good if r["case"] == case and r["tool"] == tool]
            walls[tool] = {int(r["round"]): float(r["wall_s"]) for r in mine}
            times = list(walls[tool].values())
            entry[f"{tool}_s"] = statistics.median(times) if times else None
            entry[f"{tool}_range"] = _range(times)
            entry[f"{tool}_max_mb"] = max((float(r["max_mb"]) for r in mine), default=None)
        if entry["ours_s"] and entry["nnunet_s"] is not None:
            entry["ratio"] = entry["nnunet_s"] / entry["ours_s"]
        ratios = [walls["nnunet"][k] / walls["ours"][k] for k in walls["ours"]
                  if k in walls["nnunet"] and walls["ours"][k] > 0]
        entry["round_ratios"] = (f"{min(ratios):.1f}-{max(ratios):.1f}" if ratios else "")
        out.append(entry)
    return out


def ours_ahead(cases: list[dict]) -> bool:
    """True when ours has the smaller median on every case (and every case has both)."""
    return bool(cases) and all(c.get("ratio") is not None and c["ratio"] > 1 for c in cases)


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def memory_note(gpu: bool, label: str) -> str:
    if gpu:
        return (f"max_mb is {label}: every process on the GPU and the driver, as the "
                "organisers score it; idle_mb is the same reading just before the run, so "
                "max_mb - idle_mb is what the run added")
    return (f"max_mb is the {label}. **No GPU on this machine: host memory, not GPU "
            "memory.** The sum counts every process of the tree with all its resident pages: "
            "nnU-Net's forked and spawned workers share much of their memory with the main "
            "process (libraries, the forked copy of its heap), so its max_mb overstates what "
            "it holds, while ours is one process. idle_mb is blank: a run that has not "
            "started holds nothing")


def markdown(rows: list[dict], ctx: dict) -> str:
    """The results' page; ``ctx`` holds the machine stamp, the device, the model written,
    the records, the memory label and the command line (see ``benchmark.peers.nnunet``)."""
    stamp, records = ctx["stamp"], ctx["records"]
    cases = per_case(rows)
    ours_runs = [r.run for r in records if r.tool == "ours"]
    backend = next((r.backend for r in ours_runs if r.backend), "unknown")
    ours_device = next((r.device for r in ours_runs if r.device), "unknown")
    weights = weights_note(ctx["weights"])
    nn_opts = shown_command(ctx["nnunet_options"])
    model = ctx["model"]
    load = ctx.get("load_after")
    lines = [
        *([f"- load average after the run: {'/'.join(f'{v:.2f}' for v in load)}"] if load
          else []),
        *(f"- note: {n}" for n in ctx.get("notes", [])),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        "- ours: `sh predict.sh` on a workspace holding the one case "
        f"(INPUT_DIR/OUTPUT_DIR; `--timings-json` added); weights `{weights['path']}` "
        f"({'shipped' if ctx['weights'] is None else 'given'}), preset `{weights['preset']}`"
        f"; backend {backend} on {ours_device}",
        f"- nnU-Net: `{nnunet_model.NNUNET_CLI} -i inputs -o outputs {nn_opts}` (its entry "
        "point run by the same interpreter), a fresh process per case like ours",
        f"- nnU-Net's model: plain 3D U-Net, {len(nnunet_model.FEATURES)} stages of "
        f"{', '.join(map(str, nnunet_model.FEATURES))} features, target spacing "
        f"{'x'.join(f'{s:g}' for s in nnunet_model.SPACING_ZYX)} mm (z, y, x), patch "
        f"{'x'.join(map(str, nnunet_model.PATCH_ZYX))}, CT normalisation (our plan's "
        f"intensity numbers), {model['parameters']:,} parameters, **random weights** "
        "(nnU-Net's own initialisation, seeded): its masks mean nothing, its work is that "
        "of trained weights",
        f"- {ctx['rounds']} round{'s' * (ctx['rounds'] > 1)}; round r runs each case with "
        "ours then nnU-Net when r is odd, nnU-Net then ours when even"
        + ("; one unrecorded run of each tool first" if ctx.get("warmup") else ""),
        "- wall-clock: the whole process, start-up and exit included",
        f"- memory: {memory_note(ctx['gpu'], ctx['memory'])}",
        f"- masks: {sum(r.run.output_ok for r in records)} of {len(records)} runs wrote a "
        "mask on its input's voxel grid (size, spacing, origin, direction from the headers)",
        "",
        report.markdown_table(cases, TABLE_COLUMNS),
        "Ours ahead on every case: **" + ("yes" if ours_ahead(cases) else "no") + "** "
        "(ratio: nnU-Net's median over ours; per round: the same ratio within each round).",
        "", "## Every run", "", report.markdown_table(rows, RUN_COLUMNS),
    ]
    bad = [r for r in records if not r.ok]
    if bad:
        lines += ["## Failed runs", ""] + [
            f"- round {r.round}, {r.tool}, {r.run.case}: {r.run.error or 'no mask'}"
            for r in bad] + [""]
    lines += ["## On a GPU", "",
              "The same comparison on the 554-slice case (benchmark/README.md lists the wheels "
              "a GPU machine without SimpleITK, cc3d, isal and nnU-Net needs):", "",
              "```sh",
              "python -m benchmark.peers.nnunet --make-suite --sizes 554 --rounds 3 --device cuda",
              "```", ""]
    title = "Ours beside nnU-Net v2's predictor (the FLARE24 Task 1 winner's 3D plan)"
    return report.header(title, stamp, "benchmark.peers.nnunet", ctx["argv"]) + "\n".join(lines)

