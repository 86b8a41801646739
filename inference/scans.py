"""``flare-nnsam predict``: segment scans as people hold them, with a lesion report, a
picture and a DICOM SEG on request.

The input is a scan file (NIfTI of any name, NRRD, MetaImage), a DICOM series folder, or
a folder of scan files and DICOM series folders. Each mask lies on its scan's exact
grid: ``.nii.gz`` for NIfTI and DICOM inputs, the input's own format for NRRD and
MetaImage, or the format a single output file's name asks for. The challenge's command
(``python -m inference``, ``predict.sh``) is another path and does not import this one.

Exit codes: 0 every scan written; 1 some scan of several failed (the others went on); 2
nothing could be done (the input, the output paths, the weights, the one scan given).
A scan that fails leaves none of its files.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from inference.devices import BACKENDS
from inference.folders import InputError, write_text_atomically
from inference.formats import SCAN_SUFFIXES, scan_name, scan_suffix

log = logging.getLogger("inference.scans")

# The challenge's output folder holds masks and nothing else: reports never go there.
CHALLENGE_OUTPUTS = Path("/workspace/outputs")
# Mask format per input format; NIfTI and DICOM inputs give .nii.gz.
_MASK_SUFFIX = {".nrrd": ".nrrd", ".nhdr": ".nrrd", ".mha": ".mha", ".mhd": ".mha"}
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass(frozen=True)
class Scan:
    """One input: its name for the outputs, where it is, and where its outputs go."""

    name: str
    path: Path
    mask: Path | None = None
    preview: Path | None = None
    dicom_seg: Path | None = None


def parse_args(argv=None, prog: str = "flare-nnsam predict") -> argparse.Namespace:
    from inference.budget import DEFAULT_GPU_MEMORY_MB

    p = argparse.ArgumentParser(
        prog=prog,
        description="Segment pan-cancer lesions in CT scans: a NIfTI (.nii, .nii.gz, any "
                    "name), NRRD or MetaImage file, a DICOM series folder, or a folder of "
                    "them. Each mask lies on its scan's exact grid.",
        epilog="examples:\n"
               f"  {prog} -i ct.nii.gz -o ct_lesions.nii.gz --statistics lesions.json\n"
               f"  {prog} -i dicom/series1 -o masks/ --preview series1.png\n"
               f"  {prog} -i scans/ -o masks/ --statistics masks/lesions.json "
               "--preview previews/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, type=Path,
                   help="a scan file, a DICOM series folder, or a folder of them")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="the mask file (one scan; .nii.gz, .nii, .nrrd or .mha) or a folder "
                        "for the masks")
    p.add_argument("--statistics", type=Path, metavar="FILE.json",
                   help="write each lesion's size, place, HU, probability and RECIST axes, "
                        "and each scan's totals, to this JSON file")
    p.add_argument("--preview", type=Path, metavar="FILE.png",
                   help="write a picture of each scan with the lesions outlined (a .png file "
                        "for one scan, else a folder of <scan>.png); needs matplotlib")
    p.add_argument("--dicom-seg", type=Path, metavar="FILE.dcm",
                   help="also write the mask of a DICOM series input as a DICOM Segmentation "
                        "object that refers to its slices (a .dcm file for one scan, else a "
                        "folder of <scan>.dcm); needs highdicom")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights folder (default: the weights shipped with the package)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="auto: torch on a GPU, onnxruntime on the CPU")
    p.add_argument("--gpu-memory-mb", type=float, default=DEFAULT_GPU_MEMORY_MB,
                   help=f"whole-GPU memory budget in MB (default {DEFAULT_GPU_MEMORY_MB})")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime CPU threads")
    p.add_argument("--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--disable-progress-bar", action="store_true")
    args = p.parse_args(argv)
    if args.statistics is not None and args.statistics.suffix.lower() != ".json":
        p.error(f"--statistics names a .json file, not {args.statistics}")
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1")
    return args


def main(argv=None, prog: str = "flare-nnsam predict") -> int:
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(message)s", stream=sys.stderr)
    start = time.perf_counter()
    try:
        scans = plan_outputs(list_scans(args.input), args.output, args.preview, args.dicom_seg)
        check_report_paths(args.statistics, args.preview, args.dicom_seg)
        if args.preview is not None:
            _check_installed("matplotlib", "--preview", "preview")
        if args.dicom_seg is not None:
            _check_installed("highdicom", "--dicom-seg", "dicom")
        # One scan is read before anything else: a bad one is refused with nothing written.
        first = _read(scans[0]) if len(scans) == 1 else None
    except InputError as error:
        log.error("error: %s", error)
        return 2
    from inference.api import Segmenter
    from inference.devices import DeviceError
    from inference.plans import PlanError
    from inference.weights import WeightsError

    try:
        segmenter = Segmenter(args.weights, args.device, args.backend, args.threads,
                              args.gpu_memory_mb)
    except (InputError, PlanError, WeightsError, DeviceError) as error:
        log.error("error: %s", error)
        return 2
    reports, failed = [], []
    for scan in scans:
        try:
            volume = first if first is not None else _read(scan)
            first = None
            reports.append(_segment(segmenter, scan, volume, args))
        except InputError as error:
            log.error("error: %s", error)
            failed.append(scan.name)
            reports.append({"case": scan.name, "input": str(scan.path), "error": str(error)})
        except Exception as error:  # our bug: keep the traceback, go on with the next scan
            log.exception("%s: failed (%s: %s)", scan.name, type(error).__name__, error)
            failed.append(scan.name)
            reports.append({"case": scan.name, "input": str(scan.path),
                            "error": f"{type(error).__name__}: {error}"})
    if args.statistics is not None and len(failed) < len(scans):
        write_text_atomically(args.statistics, json.dumps({"cases": reports}, indent=2) + "\n")
        log.info("statistics: %s", args.statistics)
    if failed:
        log.error("%d of %d scans failed: %s", len(failed), len(scans), ", ".join(failed))
        return 2 if len(scans) == 1 else 1
    log.info("%d scan(s) done in %.1f s", len(scans), time.perf_counter() - start)
    return 0


def _read(scan: Scan):
    from inference.formats import read_scan

    return read_scan(scan.path)


def _segment(segmenter, scan: Scan, volume, args) -> dict:
    """Segment one scan and write its mask (preview, DICOM SEG); its statistics, a dict."""
    from tqdm import tqdm

    from inference.lesions import summary

    t = time.perf_counter()
    with tqdm(desc=scan.name, unit="tile", disable=args.quiet or args.disable_progress_bar,
              leave=False) as bar:
        result = segmenter.segment(volume, probabilities=args.statistics is not None,
                                   name=scan.name, progress=bar.update)
    segmentation = None
    if scan.dicom_seg is not None:  # built first: the likeliest to fail on a user's files
        from inference.dicom_seg import dicom_seg, write_dicom_seg

        segmentation = dicom_seg(result.volume, result.mask)
    written = []
    try:
        written.append(result.write_mask(scan.mask))
        if scan.preview is not None:
            written.append(result.write_preview(scan.preview))
        if segmentation is not None:
            written.append(write_dicom_seg(segmentation, scan.dicom_seg))
    except BaseException:  # a scan's files appear all together or not at all
        for path in written:
            path.unlink(missing_ok=True)
        raise
    log.info("%s: %s; mask %s (%.1f s)", scan.name, summary(result.lesions), scan.mask,
             time.perf_counter() - t)
    paths = {"input": scan.path, "mask": scan.mask, "preview": scan.preview,
             "dicom_seg": scan.dicom_seg}
    return {"case": scan.name, **{k: str(v) for k, v in paths.items() if v is not None},
            **result.statistics()}


def list_scans(path: Path) -> list[Scan]:
    """The scans of an input path: a scan file, a DICOM series folder, or a folder holding
    scan files and DICOM series folders (hidden entries skipped)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file():
        if scan_suffix(path) is None:
            raise InputError(f"{path}: not a scan this reads: give a NIfTI (.nii, .nii.gz), "
                             "NRRD (.nrrd, .nhdr) or MetaImage (.mha, .mhd) file, or a "
                             "DICOM series folder")
        return [Scan(scan_name(path), path)]
    entries = sorted(p for p in path.iterdir() if not p.name.startswith("."))
    scans = [Scan(scan_name(p), p) for p in entries if p.is_file() and scan_suffix(p)]
    scans += [Scan(p.name, p) for p in entries if p.is_dir() and _holds_dicom(p)]
    if not scans and _holds_dicom(path):
        return [Scan(path.resolve().name, path)]
    if not scans:
        raise InputError(f"{path}: no scan in this folder: no DICOM image series, in it or in "
                         f"its subfolders, and no NIfTI, NRRD or MetaImage file "
                         f"({', '.join(SCAN_SUFFIXES)})")
    ignored = sorted({p.name for p in entries} - {scan.path.name for scan in scans})
    if ignored:
        more = f", and {len(ignored) - 5} more" if len(ignored) > 5 else ""
        log.warning("ignored in %s (not a scan file nor a DICOM series folder): %s%s", path,
                    ", ".join(ignored[:5]), more)
    names = [scan.name for scan in scans]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"{path}: several scans are named {', '.join(twice)} (their outputs "
                         "would overwrite each other): rename or move one")
    return sorted(scans, key=lambda scan: scan.name)


def _holds_dicom(folder: Path) -> bool:
    from inference.nifti import simpleitk

    return bool(simpleitk().ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def plan_outputs(scans: list[Scan], output: Path, preview: Path | None = None,
                 dicom_seg: Path | None = None) -> list[Scan]:
    """The scans with their output paths; InputError for paths that cannot work."""
    single = len(scans) == 1
    mask_file = scan_suffix(output) is not None
    if mask_file and not single:
        raise InputError(f"-o {output} names one file but the input holds {len(scans)} scans: "
                         "give a folder")
    if mask_file and not output.name.endswith(MASK_SUFFIXES):  # ITK's writers want lower case
        raise InputError(f"-o {output}: a mask is written as .nii.gz, .nii, .nrrd or .mha")
    if dicom_seg is not None and single and not scans[0].path.is_dir():
        raise InputError(f"--dicom-seg: {scans[0].path} is not a DICOM series; a DICOM SEG "
                         "refers to the slices of one")
    planned = []
    for scan in scans:
        suffix = _MASK_SUFFIX.get(scan_suffix(scan.path) or "", ".nii.gz")
        mask = output if mask_file else output / f"{scan.name}{suffix}"
        if mask.resolve() == scan.path.resolve():
            raise InputError(f"{mask}: the mask would overwrite its input: choose another -o")
        picture = _report_path("--preview", preview, ".png", scan, len(scans))
        seg = _report_path("--dicom-seg", dicom_seg, ".dcm", scan, len(scans)) \
            if scan.path.is_dir() else None
        planned.append(Scan(scan.name, scan.path, mask, picture, seg))
    for target in {p.parent for scan in planned for p in (scan.mask, scan.preview,
                                                          scan.dicom_seg) if p}:
        _check_writable(target)
    return planned


def _report_path(option: str, path: Path | None, suffix: str, scan: Scan,
                 count: int) -> Path | None:
    """A scan's report file: ``path`` itself when it names one (one scan only), else
    ``<scan><suffix>`` in the folder ``path``."""
    if path is None:
        return None
    if path.suffix.lower() != suffix:
        return path / f"{scan.name}{suffix}"
    if count > 1:
        raise InputError(f"{option} {path} names one file but the input holds {count} scans: "
                         "give a folder")
    return path


def check_report_paths(statistics: Path | None, preview: Path | None = None,
                       dicom_seg: Path | None = None) -> None:
    """Reports go anywhere but the challenge's output folder (it holds only masks)."""
    for option, path in (("--statistics", statistics), ("--preview", preview),
                         ("--dicom-seg", dicom_seg)):
        if path is None:
            continue
        resolved = path.resolve()
        if resolved == CHALLENGE_OUTPUTS or CHALLENGE_OUTPUTS in resolved.parents:
            raise InputError(f"{option} {path} lies in {CHALLENGE_OUTPUTS}, the challenge's "
                             "output folder, which must hold the masks and nothing else: "
                             "write it elsewhere")
        if option == "--statistics":
            if path.is_dir():
                raise InputError(f"--statistics {path} is a folder: name a .json file")
            _check_writable(path.parent)


def _check_writable(folder: Path) -> None:
    """InputError unless ``folder`` exists writable or can be created (nothing is made)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{folder}: {existing} is not writable: choose another output path")


def _check_installed(module: str, option: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise InputError(f"{option} needs {module}: pip install 'flare-nnsam[{extra}]'")


if __name__ == "__main__":
    sys.exit(main())
