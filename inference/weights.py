"""The weights folder the container reads, and the function that writes it.

    weights/
      plans.json   the plan (spacing, patch, normalisation, thresholds, preset)
      model.pt     torch state dict (torch backend; loaded with weights_only=True)
      model.onnx   lesion-probability graph for onnxruntime (fixed tile batch)
      model.json   how the files were made: preset, ONNX batch and form, provenance
      SHA256SUMS   checksums of the four files above, checked at load

Reading never imports torch, so the onnxruntime path stays free of it.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from inference.folders import atomic_temporary, write_text_atomically
from inference.plans import Plan

PLANS, TORCH_MODEL, ONNX_MODEL, MODEL_INFO, SUMS = (
    "plans.json", "model.pt", "model.onnx", "model.json", "SHA256SUMS")
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
        raise WeightsError(f"{path}: sha256 does not match SHA256SUMS; the file is corrupt "
                           "or was changed after export")
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
    names = [PLANS, TORCH_MODEL, ONNX_MODEL, MODEL_INFO]
    (folder / SUMS).write_text("".join(f"{sha256(folder / n)}  {n}\n" for n in names))
    return folder
