"""The weights folder the container reads, and the only code that writes it.

    weights/
      plans.json   the plan (spacing, patch, normalisation, thresholds, preset)
      model.pt     torch state dict (torch backend; loaded with weights_only=True)
      model.onnx   lesion-probability graph for onnxruntime (fixed tile batch)
      model.json   how the files were made: preset, ONNX batch and form, provenance
      SHA256SUMS   checksums of the four files above, checked at load

``training export`` writes a folder (``write_weights``), ``training thresholds`` a new plan
into it (``save_plan``). A plan edited by hand is refused until it is signed again:

    python -m inference.weights sign DIR             # plans.json, model.json checked, signed
    python -m inference.weights set DIR FIELD VALUE  # e.g. postprocessing.min_volume_mm3 200

Both check the plan with all of its own checks first and leave the folder as it was when
one fails; the model files are never re-signed (a changed model is exported again).
Reading never imports torch, so the onnxruntime path stays free of it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path

from inference.folders import atomic_temporary, write_text_atomically
from inference.plans import Plan, PlanError

PLANS, TORCH_MODEL, ONNX_MODEL, MODEL_INFO, SUMS = (
    "plans.json", "model.pt", "model.onnx", "model.json", "SHA256SUMS")
SIGNED = (PLANS, TORCH_MODEL, ONNX_MODEL, MODEL_INFO)
EDITABLE = (PLANS, MODEL_INFO)  # what ``sign`` signs again; the model files never
DEFAULT_ONNX_BATCH = 8


class WeightsError(RuntimeError):
    """A weights folder that cannot be used; the message names the file."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(folder: Path) -> dict[str, str]:
    """``name -> sha256`` from SHA256SUMS (``sha256sum``'s format); WeightsError if malformed."""
    path = folder / SUMS
    if not path.is_file():
        raise WeightsError(f"{path}: missing; the weights folder has no checksums")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsError(f"{path}: cannot be read ({error})") from None
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            raise WeightsError(f"{path}: line {number} is not '<sha256>  <file name>' "
                               f"({line.strip()[:60]!r}); write it with sha256sum")
        sums[_file_name(parts[1])] = parts[0].lower()
    return sums


def _file_name(text: str) -> str:
    """A name as ``sha256sum -c`` reads it: ``*`` marks binary mode, ``./`` this folder."""
    name = text.strip().removeprefix("*")
    while name.startswith("./"):
        name = name[2:]
    return name


def verified(folder: str | Path, name: str) -> Path:
    """Path to ``name`` in ``folder`` after checking its sha256 against SHA256SUMS."""
    folder = Path(folder)
    path = folder / name
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the weights folder")
    expected = read_sums(folder).get(name)
    if expected is None:
        raise WeightsError(f"{folder / SUMS}: no checksum for {name}")
    if sha256(path) != expected:
        fix = f"; if you edited it, check and re-sign it: python -m inference.weights sign " \
              f"{folder}" if name in EDITABLE else ": export the weights again"
        raise WeightsError(f"{path}: sha256 does not match SHA256SUMS; the file is corrupt "
                           f"or was changed after export{fix}")
    return path


def load_plan(folder: str | Path) -> Plan:
    return Plan.load(verified(folder, PLANS))


def load_info(folder: str | Path) -> dict:
    return json.loads(verified(folder, MODEL_INFO).read_text())


def write_weights(folder: str | Path, model, plan: Plan, onnx_batch: int = DEFAULT_ONNX_BATCH,
                  info: dict | None = None) -> Path:
    """Write plans, torch and ONNX models, provenance and checksums into ``folder``."""
    import torch

    from inference.onnx_export import export_onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan.save(folder / PLANS)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_temporary(folder / TORCH_MODEL) as temporary:
        torch.save(state, temporary)
    export_onnx(model, folder / ONNX_MODEL, batch_size=onnx_batch, form="grouped",
                output="probability")
    meta = {"preset": plan.preset, "onnx_batch": onnx_batch, "onnx_form": "grouped",
            "onnx_output": "lesion probability (batch, y, x)", **(info or {})}
    write_text_atomically(folder / MODEL_INFO, json.dumps(meta, indent=2) + "\n")
    _write_sums(folder, {name: sha256(folder / name) for name in SIGNED})
    return folder


def _write_sums(folder: Path, sums: dict[str, str]) -> None:
    """SHA256SUMS in ``sha256sum``'s format: the one writer of a folder's checksums."""
    write_text_atomically(folder / SUMS, "".join(f"{digest}  {name}\n"
                                                 for name, digest in sums.items()))


def save_plan(folder: str | Path, plan: Plan) -> Path:
    """``plan`` (checked) as the folder's plans.json, signed; the other files keep their
    checksums."""
    folder = Path(folder)
    sums = read_sums(folder)
    plan.save(folder / PLANS)
    sums[PLANS] = sha256(folder / PLANS)
    _write_sums(folder, sums)
    return folder / PLANS


def sign(folder: str | Path) -> list[str]:
    """Sign plans.json and model.json again after checking them (the plan with all of its
    own checks, model.json as JSON); the names whose checksum changed.

    The model files must still match their checksums: they are not signed again. PlanError
    or WeightsError (one line naming the file) leaves the folder as it was.
    """
    folder = Path(folder)
    sums = read_sums(folder)
    for name in SIGNED:
        if name not in EDITABLE:
            verified(folder, name)
    Plan.load(folder / PLANS)
    _check_info(folder / MODEL_INFO)
    changed = [name for name in EDITABLE if sums.get(name) != sha256(folder / name)]
    if changed:
        _write_sums(folder, sums | {name: sha256(folder / name) for name in EDITABLE})
    return changed


def _check_info(path: Path) -> None:
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"{path}: missing from the weights folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: cannot be read as JSON ({error})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{path}: expected a JSON object")


def set_plan_field(folder: str | Path, field: str, value) -> Plan:
    """The signed plan with ``field`` (``section.name`` inside a section, e.g.
    ``postprocessing.threshold``) set to ``value``, checked, written and signed.

    The rest of plans.json is kept as it is. PlanError (one line naming the file and the
    field) leaves the folder as it was.
    """
    folder = Path(folder)
    path = verified(folder, PLANS)
    data = json.loads(path.read_text())
    *sections, name = field.split(".")
    target = data
    for depth, key in enumerate(sections, 1):
        target = target.get(key) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            raise PlanError(f"{path}: {field}: the plan has no section "
                            f"{'.'.join(sections[:depth])!r}")
    target[name] = value
    plan = Plan.from_dict(data, str(path))
    write_text_atomically(path, json.dumps(data, indent=2) + "\n")
    _write_sums(folder, read_sums(folder) | {PLANS: sha256(path)})
    return plan


def _json_value(text: str):
    """A value given on the command line: JSON where it parses (200, 0.5, true, [2, 2, 3],
    null), else the text itself (LPS)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m inference.weights",
        description="Sign a weights folder's plan again after a change by hand, or change one "
                    "field of it; the plan is checked first, the model files are never signed "
                    "again.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sign", help="check plans.json and model.json and sign them again")
    p.add_argument("folder", type=Path, metavar="DIR")
    p = sub.add_parser("set", help="set one field of plans.json, check the plan, sign it")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("field", metavar="FIELD",
                   help="a plan field; section.name inside a section "
                        "(e.g. postprocessing.min_volume_mm3, tile_step)")
    p.add_argument("value", metavar="VALUE", help="JSON (200, 0.5, true, [2, 2, 3]) or text")
    args = parser.parse_args(argv)
    try:
        if args.command == "sign":
            changed = sign(args.folder)
            print(f"{args.folder}: signed {', '.join(changed)}" if changed else
                  f"{args.folder}: every checksum already matches")
        else:
            set_plan_field(args.folder, args.field, _json_value(args.value))
            print(f"{args.folder / PLANS}: {args.field} = {args.value}; signed")
    except (PlanError, WeightsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
