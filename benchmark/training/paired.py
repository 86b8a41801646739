"""Two sets of weights on the same held-out cases, case by case
(``python -m benchmark.training.paired``).

    python -m benchmark.training.paired --dataset DIR --scores NEW.csv OLD.csv \
        [--lesions NEW_LESIONS.csv OLD_LESIONS.csv] [--names new shipped] [--json FILE]

The scores are ``python -m evaluation --csv`` files of the same cases; the lesion files
``python -m benchmark.training.lesions --csv`` ones. Over the cases that hold a lesion:
each one's mean DSC and NSD and the paired difference (first minus second), mean and
standard error (the per-case differences' standard deviation over the square root of
their number); the fraction of lesion-free cases left empty; the lesions of 5 ml or more
found. ``better``: the first's lesion DSC exceeds the second's by more than one standard
error.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import numpy as np

from inference.folders import write_text_atomically
from training.demo import summarise_scores

LARGE_ML = 5.0


def _per_case(scores_csv: Path) -> dict[str, dict]:
    with open(scores_csv) as f:
        return {row["case"]: row for row in csv.DictReader(f)}


def paired_difference(first: dict, second: dict, cases: list[str], key: str) -> dict:
    """Mean and standard error of ``first - second`` over ``cases``."""
    diff = np.array([float(first[c][key]) - float(second[c][key]) for c in cases])
    if not len(diff):
        return {"mean": math.nan, "se": math.nan, "n": 0}
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {"mean": float(diff.mean()), "se": se, "n": len(diff)}


def large_lesions_found(lesions_csv: Path) -> dict:
    """Lesions of ``LARGE_ML`` or more: how many, how many found."""
    with open(lesions_csv) as f:
        rows = [r for r in csv.DictReader(f) if float(r["volume_ml"]) >= LARGE_ML]
    return {"lesions": len(rows), "found": sum(int(r["found"]) for r in rows)}


def compare(dataset: Path, scores: list[Path], lesions: list[Path] | None = None,
            names=("new", "shipped")) -> dict:
    """Both summaries and their paired differences (see the module)."""
    meta = json.loads((dataset / "dataset.json").read_text())
    lesion_cases = [e["id"] for e in meta["training"] if e["n_lesions"] > 0]
    first, second = (_per_case(path) for path in scores)
    missing = sorted(set(first) ^ set(second))
    if missing:
        raise ValueError(f"{scores[0]} and {scores[1]} score different cases ({missing[0]})")
    lesion_cases = [c for c in lesion_cases if c in first]
    out = {name: summarise_scores(path, dataset) for name, path in zip(names, scores)}
    for name, path in zip(names, lesions or []):
        out[name]["large_lesions"] = large_lesions_found(path)
    out["difference"] = {key: paired_difference(first, second, lesion_cases, key)
                         for key in ("dsc", "nsd")}
    dsc = out["difference"]["dsc"]
    out["better"] = bool(dsc["n"] > 1 and dsc["mean"] > dsc["se"])
    out["names"] = list(names)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.training.paired",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, required=True, help="the cases' dataset folder")
    p.add_argument("--scores", type=Path, nargs=2, required=True, metavar="CSV")
    p.add_argument("--lesions", type=Path, nargs=2, metavar="CSV")
    p.add_argument("--names", nargs=2, default=("new", "shipped"))
    p.add_argument("--json", type=Path, help="also write the comparison here")
    args = p.parse_args(argv)
    try:
        out = compare(args.dataset, args.scores, args.lesions, tuple(args.names))
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    a, b = args.names
    d = out["difference"]["dsc"]
    print(f"lesion DSC {a} {out[a]['lesion_dsc']:.3f}, {b} {out[b]['lesion_dsc']:.3f}: "
          f"{d['mean']:+.3f} +- {d['se']:.3f} over {d['n']} lesion cases "
          f"({'better' if out['better'] else 'not better'} by more than one standard error)")
    for name in args.names:
        large = out[name].get("large_lesions")
        print(f"{name}: lesion-free cases empty {out[name]['healthy_empty_fraction']:.2f}"
              + (f", lesions >= {LARGE_ML:g} ml found {large['found']} of {large['lesions']}"
                 if large else ""))
    if args.json:
        write_text_atomically(args.json, json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
