"""Our 2.5D sliding-window engine against MONAI's ``sliding_window_inference``, same work.

    python -m benchmark.engines [--preset fast] [--shape Z Y X] [--device cpu|cuda]
                                [--overlap 0.5] [--batch-size 8] [--repeats 3] [-o OUT]

What is compared, and why it is fair:

- Input: a phantom CT built directly at the plan's target spacing (the shape the engine
  sees after preprocessing), normalised as the plan says; its body mask is
  ``HU > body_threshold_hu``. One input, saved once, read by every run.
- Network: ``LesionProbability(build_model(preset))`` from one seed, eval mode, the
  same in every run; on CUDA both engines call it under the same fp16 autocast.
- 2.5D for MONAI: MONAI's inferer is 2D over a (Z, 3, Y, X) stack whose channels are
  each slice's neighbours (edges replicated, as ours), with the slices as MONAI's batch
  dimension, roi = our patch and ``sw_batch_size`` = our batch size. MONAI then batches
  windows across slices exactly as ours does, so both make the same network calls on
  the same tiles. (Looping MONAI over single slices would cap its batches at the tiles
  of one slice, a handicap that is not the engine's.) Building the stack is MONAI's cost
  of doing 2.5D and is timed with it.
- Blending: Gaussian, sigma = patch/8 in both (MONAI ``sigma_scale=0.125``). MONAI
  raises weights below 1e-3 to 1e-3 (the tile rim); ours keeps the exact Gaussian
  (down to ~1e-7 in the corners). That is the only difference in the arithmetic; a
  second, untimed MONAI run with our weight map (``roi_weight_map``) shows it.
- Tiles: both engines use the same step, patch * (1 - overlap). MONAI starts windows at
  multiples of the step and pulls the last one back to the edge; ours spreads them
  evenly. They coincide when an axis needs at most two tiles or the step divides
  (size - patch): the default shape is chosen so; the report says whether they do.
- Body skipping: ours runs without the body mask (equal work: the headline ratio) and
  with it (what the container does).

Time is the best of ``--repeats`` after one warm-up round; each engine lives in its own
process and the rounds go round-robin over the engines, so a busy machine slows them
alike. Peak memory: CPU, the rise of the process's resident high-water mark over
its level after set-up (``/proc/self/clear_refs`` resets the mark on Linux; elsewhere
``getrusage``, which includes set-up); CUDA, ``torch.cuda.max_memory_allocated`` over
the set-up level. Results go to ``engines_<device>_<date>_<preset>.md/.json``. The last
line printed is ``speedup_vs_monai: X.XX`` (MONAI's time over ours, without skipping).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmark import machine, report

log = logging.getLogger("benchmark.engines")

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("ours", "ours_body", "monai")
LABELS = {
    "ours": "ours, no body skipping (equal work)",
    "ours_body": "ours, body skipping (as the container runs)",
    "monai": "MONAI sliding_window_inference (2D over the 3-slice stack)",
    "monai_our_weights": "MONAI with our Gaussian as roi_weight_map (check only, untimed)",
}


# ----------------------------------------------------------------------------- engines

def make_input(shape_zyx, preset: str = "fast", seed: int = 0):
    """A normalised phantom volume at the plan's target spacing and its body mask."""
    from inference.plans import Plan
    from training.phantoms import make_phantom

    plan = Plan(preset=preset)
    z, y, x = shape_zyx
    phantom = make_phantom((x, y, z), plan.target_spacing, seed=seed, dtype="float32")
    hu = phantom.image.astype(np.float32)
    body = hu > plan.body_threshold_hu
    n = plan.normalization  # the same clip and z-score as inference.preprocess
    volume = (np.clip(hu, n.clip_low, n.clip_high) - n.mean) / n.std
    return np.ascontiguousarray(volume, np.float32), body


def make_network(preset: str, seed: int = 0, device: str = "cpu"):
    """The lesion-probability network, identical for a given (preset, seed)."""
    import torch

    from inference.model import LesionProbability, build_model

    torch.manual_seed(seed)
    return LesionProbability(build_model(preset)).eval().to(device)


def _predict_fn(model, device):
    import torch

    fp16 = torch.device(device).type == "cuda"

    def predict(tiles):
        with torch.inference_mode(), torch.autocast(torch.device(device).type, torch.float16,
                                                    enabled=fp16):
            return model(tiles).float()

    return predict


def ours_engine(volume, model, patch, overlap: float, batch_size: int, body=None,
                pad_value: float = 0.0, device: str = "cpu"):
    """Our ``sliding_window`` on a torch volume; (Z, Y, X) probabilities."""
    from inference.sliding_window import sliding_window

    return sliding_window(volume, _predict_fn(model, device), tuple(patch), 1 - overlap,
                          context=3, batch_size=batch_size, body=body, pad_value=pad_value)


def context_stack(volume, context: int = 3):
    """(Z, context, Y, X): each slice with its neighbours as channels, edges replicated."""
    import torch

    half = context // 2
    z = volume.shape[0]
    index = torch.arange(z, device=volume.device)
    index = torch.stack([(index + o).clamp(0, z - 1) for o in range(-half, half + 1)], 1)
    return volume[index]


def monai_engine(volume, model, patch, overlap: float, batch_size: int,
                 pad_value: float = 0.0, device: str = "cpu", weight_map=None):
    """MONAI's inferer, 2D over the 3-slice stack with slices as the batch; (Z, Y, X)."""
    from monai.inferers import sliding_window_inference

    predict = _predict_fn(model, device)
    stack = context_stack(volume)
    out = sliding_window_inference(
        stack, roi_size=tuple(patch), sw_batch_size=batch_size,
        predictor=lambda x: predict(x)[:, None], overlap=overlap, mode="gaussian",
        sigma_scale=0.125, padding_mode="constant", cval=pad_value,
        roi_weight_map=weight_map)
    return out[:, 0]


def tile_placements(shape_zyx, patch, overlap: float) -> dict:
    """In-plane tile starts of both engines (MONAI's from its own ``dense_patch_slices``)."""
    from monai.data.utils import dense_patch_slices

    from inference.sliding_window import tile_starts

    size = [max(n, p) for n, p in zip(shape_zyx[1:], patch)]  # MONAI pads up to the patch
    # MONAI's scan interval: int(patch * (1 - overlap)), at least 1; the patch on a full axis.
    interval = [p if n == p else max(int(p * (1 - overlap)), 1) for n, p in zip(size, patch)]
    windows = dense_patch_slices(size, tuple(patch), interval)
    result = {"same": True}
    for i, axis in enumerate("yx"):
        ours = tile_starts(shape_zyx[1 + i], patch[i], 1 - overlap)
        monai = sorted({int(w[i].start) for w in windows})
        result[axis] = {"ours": ours, "monai": monai}
        result["same"] &= ours == monai
    # A small axis is padded at the end by ours and on both sides by MONAI.
    result["padded"] = any(n < p for n, p in zip(shape_zyx[1:], patch))
    result["same"] &= not result["padded"]
    return result


# ----------------------------------------------------------------------------- measuring

def _rss_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) if m else None


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class _Engine:
    """One engine variant set up in this process: network, input, and its memory baseline."""

    def __init__(self, variant: str, task: dict):
        import torch

        self.torch, self.variant, self.task = torch, variant, task
        self.device = task["device"]
        self.cuda = torch.device(self.device).type == "cuda"
        self.model = make_network(task["preset"], task["seed"], self.device)
        self.volume = torch.from_numpy(np.load(task["volume"])).to(self.device)
        self.body = np.load(task["body"]) if variant == "ours_body" else None
        self.weight_map = None
        if variant == "monai_our_weights":
            from inference.sliding_window import gaussian_importance

            self.weight_map = torch.from_numpy(gaussian_importance(task["patch"])).to(self.device)
        self.out = None
        # Imports allocate too: do them before the memory baseline, not in the warm-up.
        from monai.inferers import sliding_window_inference  # noqa: F401

        from inference.sliding_window import sliding_window  # noqa: F401

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            self.method = "torch.cuda.max_memory_allocated over the level after set-up"
        elif _reset_high_water_mark() and _rss_kb("VmRSS") is not None:
            self.base = _rss_kb("VmRSS")
            self.method = "resident high-water mark (VmHWM) over VmRSS after set-up"
        else:
            self.base = _rss_kb("VmRSS") or 0
            self.method = "getrusage max RSS over RSS after set-up (includes set-up peaks)"

    def run(self) -> float:
        """One timed call of the engine."""
        torch, task = self.torch, self.task
        args = (self.volume, self.model, task["patch"], task["overlap"], task["batch_size"])
        self.out = None
        start = time.perf_counter()
        with torch.inference_mode():  # around the whole call for both: MONAI blends in place
            if self.variant.startswith("monai"):
                self.out = monai_engine(*args, pad_value=task["pad_value"], device=self.device,
                                        weight_map=self.weight_map)
            else:
                self.out = ours_engine(*args, body=self.body, pad_value=task["pad_value"],
                                       device=self.device)
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def peak_mb(self) -> float:
        if self.cuda:
            return (self.torch.cuda.max_memory_allocated() - self.base) / 2**20
        if "VmHWM" in self.method:
            return (_rss_kb("VmHWM") - self.base) / 1024
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - self.base) / 1024

    def finish(self, path: str) -> dict:
        np.save(path, self.out.float().cpu().numpy())
        return {"peak_mb": self.peak_mb(), "memory_method": self.method,
                "threads": self.torch.get_num_threads()}


def _worker(variant, task, conn):
    """Serve "run" and "finish" requests for one engine, so rounds can interleave engines."""
    try:
        engine = _Engine(variant, task)
        conn.send(("ready", None))
        while True:
            request = conn.recv()
            if request == "run":
                conn.send(("ok", engine.run()))
            else:
                conn.send(("ok", engine.finish(request)))
                return
    except BaseException as error:  # noqa: BLE001 - reported by the parent
        import traceback

        conn.send(("error", f"{type(error).__name__}: {error}\n{traceback.format_exc()}"))


class EngineProcess:
    """An engine variant in its own spawned process (clean memory mark, own caches)."""

    def __init__(self, variant: str, task: dict):
        ctx = mp.get_context("spawn")
        self.variant = variant
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(variant, task, child),
                                name=f"engine-{variant}", daemon=True)
        self.proc.start()
        child.close()
        self._reply()

    def _reply(self):
        try:
            status, payload = self.conn.recv()
        except EOFError:
            status, payload = "error", "the process died (out of memory?)"
        if status == "error":
            self.proc.join(5)
            raise RuntimeError(f"{self.variant}: {payload}")
        return payload

    def run(self) -> float:
        self.conn.send("run")
        return self._reply()

    def finish(self, out_path: str) -> dict:
        self.conn.send(out_path)
        result = self._reply()
        self.proc.join(30)
        return result


# ----------------------------------------------------------------------------- CLI

def compare(preset: str, shape, device: str, overlap: float, batch_size: int, repeats: int,
            seed: int = 0, check_weights: bool = True) -> dict:
    """Measure every variant on one input; the results as one dict."""
    from inference.model import get_config
    from inference.plans import Plan
    from inference.preprocess import pad_value
    from inference.sliding_window import plan_tiles

    patch = get_config(preset).patch_size
    volume, body = make_input(shape, preset, seed)
    results = {"preset": preset, "shape_zyx": list(shape), "device": device,
               "overlap": overlap, "step": 1 - overlap, "batch_size": batch_size,
               "patch": list(patch), "repeats": repeats, "seed": seed,
               "tiles": {"all": len(plan_tiles(volume.shape, patch, 1 - overlap)),
                         "body": len(plan_tiles(volume.shape, patch, 1 - overlap, body))},
               "placements": tile_placements(shape, patch, overlap), "variants": {}}
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        tmp = Path(tmp)
        np.save(tmp / "volume.npy", volume)
        np.save(tmp / "body.npy", body)
        task = {"preset": preset, "seed": seed, "device": device, "patch": tuple(patch),
                "overlap": overlap, "batch_size": batch_size,
                "pad_value": pad_value(Plan(preset=preset)),
                "volume": str(tmp / "volume.npy"), "body": str(tmp / "body.npy")}
        # Round-robin: a busy machine slows every engine alike, not whichever ran last.
        engines = {v: EngineProcess(v, task) for v in VARIANTS}
        times = {v: [] for v in VARIANTS}
        for round_ in range(1 + repeats):
            lap = {v: engine.run() for v, engine in engines.items()}
            if round_:  # round 0 is the warm-up
                for v in VARIANTS:
                    times[v].append(lap[v])
            log.info("%s: %s", f"round {round_}" if round_ else "warm-up",
                     ", ".join(f"{v} {t:.2f} s" for v, t in lap.items()))
        outputs = {}
        for v, engine in engines.items():
            r = engine.finish(str(tmp / f"{v}.npy"))
            r.update(times_s=times[v], best_s=min(times[v]), median_s=float(np.median(times[v])))
            results["variants"][v] = r
            outputs[v] = np.load(tmp / f"{v}.npy")
        if check_weights:
            log.info("checking MONAI with our weight map (one untimed run) ...")
            engine = EngineProcess("monai_our_weights", task)
            engine.run()
            results["variants"]["monai_our_weights"] = engine.finish(str(tmp / "check.npy"))
            outputs["monai_our_weights"] = np.load(tmp / "check.npy")
    ref = outputs["ours"]
    for v, out in outputs.items():
        results["variants"][v]["max_abs_diff_vs_ours"] = float(np.abs(out - ref).max())
        results["variants"][v]["mean_abs_diff_vs_ours"] = float(np.abs(out - ref).mean())
        results["variants"][v]["max_abs_diff_vs_ours_inside_body"] = float(
            np.abs(out - ref)[body].max()) if body.any() else 0.0
    best = {v: results["variants"][v]["best_s"] for v in VARIANTS}
    results["speedup_vs_monai"] = best["monai"] / best["ours"]
    results["speedup_vs_monai_with_body_skipping"] = best["monai"] / best["ours_body"]
    return results


def _markdown(res: dict, stamp: dict, argv) -> str:
    rows = []
    for v, r in res["variants"].items():
        rows.append({"engine": LABELS[v], "best": r["best_s"] if v != "monai_our_weights" else None,
                     "median": r["median_s"] if v != "monai_our_weights" else None,
                     "peak": r["peak_mb"] if v != "monai_our_weights" else None,
                     "diff": r["max_abs_diff_vs_ours"], "mean": r["mean_abs_diff_vs_ours"],
                     "diff_body": r["max_abs_diff_vs_ours_inside_body"]})
    table = report.markdown_table(rows, [
        ("engine", "engine"), ("best", "best time (s)", ".3f"), ("median", "median (s)", ".3f"),
        ("peak", "peak memory (MB)", ".0f"), ("diff", "max abs diff vs ours", ".2e"),
        ("mean", "mean abs diff", ".2e"),
        ("diff_body", "same, inside the body", ".2e")])
    pl = res["placements"]
    first = next(iter(res["variants"].values()))
    z, y, x = res["shape_zyx"]
    lines = [
        f"# Sliding-window engines: ours vs MONAI ({res['device']}, preset {res['preset']})", "",
        f"- machine: {machine.describe(stamp)}",
        f"- command: `{' '.join(['python -m benchmark.engines', *argv])}`",
        f"- input: phantom {z}x{y}x{x} (Z, Y, X) at the plan's target spacing, normalised; "
        f"patch {res['patch'][0]}x{res['patch'][1]}, 3 context slices, overlap "
        f"{res['overlap']}, {res['batch_size']} tiles per network call",
        f"- network: `LesionProbability(build_model('{res['preset']}'))`, seed {res['seed']}, "
        "eval mode, untrained (random weights: the speed is real, the probabilities are not "
        "a segmentation)",
        f"- tiles: {res['tiles']['all']} without body skipping, {res['tiles']['body']} with it",
        f"- tile placements: {'identical' if pl['same'] else 'DIFFERENT'} "
        f"(y starts ours {pl['y']['ours']}, MONAI {pl['y']['monai']}; x starts ours "
        f"{pl['x']['ours']}, MONAI {pl['x']['monai']})",
        f"- timing: best of {res['repeats']} rounds after one warm-up round, each engine in "
        f"its own process, rounds round-robin over the engines, {first['threads']} torch "
        f"threads; memory: {first['memory_method']}", "",
        table,
        f"speedup_vs_monai_with_body_skipping: {res['speedup_vs_monai_with_body_skipping']:.2f}  ",
        f"speedup_vs_monai: {res['speedup_vs_monai']:.2f} (MONAI's best time over ours, "
        "equal work)", "",
        "The outputs differ only where tiles overlap: MONAI raises Gaussian weights below "
        "1e-3 (the tile rim) to 1e-3, ours keeps the exact Gaussian. With our weight map "
        "MONAI's output matches ours to float rounding (the last row). MONAI's peak includes "
        "the (Z, 3, Y, X) stack it needs for 2.5D; ours gathers the context slices per batch "
        "and blends slab by slab.",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmark.engines",
        description="Time our sliding-window engine against MONAI's sliding_window_inference "
                    "on the same network, input, overlap and Gaussian blending.")
    p.add_argument("--preset", default="fast", help="network preset (default fast)")
    p.add_argument("--shape", type=int, nargs=3, default=(32, 288, 288), metavar=("Z", "Y", "X"),
                   help="volume the engines see, at the target spacing (default 32 288 288)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--overlap", type=float, default=0.5, help="tile overlap (default 0.5)")
    p.add_argument("--batch-size", type=int, default=8, help="tiles per network call (default 8)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, default=RESULTS, help="results folder")
    args = p.parse_args(argv)
    if not 0 <= args.overlap < 1:
        p.error("--overlap must lie in [0, 1)")
    if args.repeats < 1 or args.batch_size < 1 or min(args.shape) < 1:
        p.error("--repeats, --batch-size and --shape must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        import monai  # noqa: F401
    except ImportError:
        log.error("error: MONAI is not installed; pip install monai (the bench extra)")
        return 2
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log.error("error: --device %s: torch sees no GPU here", args.device)
            return 2
    stamp = machine.stamp()
    res = compare(args.preset, tuple(args.shape), args.device, args.overlap, args.batch_size,
                  args.repeats, args.seed)
    res["machine"] = stamp
    shown = argv if argv is not None else sys.argv[1:]
    base = args.output / f"engines_{machine.slug(stamp, args.device)}_{args.preset}"
    report.write_text(base.with_suffix(".json"), json.dumps(res, indent=2) + "\n")
    text = _markdown(res, stamp, shown)
    report.write_text(base.with_suffix(".md"), text)
    for v, r in res["variants"].items():
        best = f"{r['best_s']:.3f} s" if v != "monai_our_weights" else "untimed"
        print(f"{LABELS[v]}: {best}, peak {r['peak_mb']:.0f} MB, "
              f"max abs diff vs ours {r['max_abs_diff_vs_ours']:.2e}")
    print(f"tile placements identical: {res['placements']['same']}")
    print(f"results: {base.name}.md/.json")
    print(f"speedup_vs_monai_with_body_skipping: {res['speedup_vs_monai_with_body_skipping']:.2f}")
    print(f"speedup_vs_monai: {res['speedup_vs_monai']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
