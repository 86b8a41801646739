"""``flare-nnsam COMMAND ...``: predict, train, evaluate, profile.

Only the dispatcher lives here, above the four packages: each command's module is
imported when that command runs, so ``flare-nnsam predict`` never imports training or
the benchmarks, and ``python -m inference`` (the challenge's command) never imports this.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import textwrap

# name -> (module, what it does, the extra that installs what it needs)
COMMANDS = {
    "predict": ("inference.scans",
                "segment CT scans: a NIfTI, NRRD or MetaImage file, a DICOM series folder, or "
                "a folder of them; masks on each scan's grid, --statistics (lesion table with "
                "RECIST axes) and --preview (a picture)", "cpu"),
    "train": ("training.__main__",
              "the training stages: plan, preprocess, train, export, thresholds, pseudolabel, "
              "ceiling, demo", "train"),
    "evaluate": ("evaluation.evaluate",
                 "DSC and NSD of predicted masks against labels, FLARE 2024 Task 1 rules",
                 "train"),
    "profile": ("benchmark.profile",
                "time a fresh predict.sh per case as the organisers measure (the paper's "
                "Table 4)", "bench"),
}
PROJECT = ("flare_nnsam", "inference", "evaluation", "training", "benchmark")


def parser() -> argparse.ArgumentParser:
    listing = "\n".join(textwrap.fill(what, 79, initial_indent=f"  {name:<10}",
                                      subsequent_indent=" " * 12)
                        for name, (_, what, _) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="flare-nnsam",
        description="Pan-cancer lesion segmentation in CT (nnSAM with dynamic convolution): "
                    "segment scans, train a model, score masks, profile the container.",
        epilog=f"commands:\n{listing}\n\n"
               "examples:\n"
               "  flare-nnsam predict -i ct.nii.gz -o lesions.nii.gz --statistics lesions.json\n"
               "  flare-nnsam train plan -d DATASET -o run/plans.json\n"
               "  flare-nnsam evaluate --pred masks/ --gt labels/\n\n"
               "flare-nnsam COMMAND -h shows a command's options. The challenge container\n"
               "runs predict.sh (python -m inference), not these commands.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, metavar="COMMAND",
                   help="one of: " + ", ".join(COMMANDS))
    p.add_argument("arguments", nargs=argparse.REMAINDER,
                   help="the command's own arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    name, _, extra = COMMANDS[args.command]
    try:
        module = importlib.import_module(name)
        return module.main(args.arguments, prog=f"flare-nnsam {args.command}")
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] in PROJECT:
            raise  # a module of ours missing is a bug, not an installation to complete
        print(f"flare-nnsam {args.command}: error: it needs {error.name}, which is not "
              f"installed: pip install 'flare-nnsam[{extra}]'", file=sys.stderr)
        return 2
