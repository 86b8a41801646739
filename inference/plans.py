"""The plan: how a dataset is seen by the network, saved as ``plans.json``.

Training fills it from a dataset fingerprint (``python -m training plan``); the
container reads it. One definition serves both, so a model is trained and served with
the same spacing, orientation, normalisation and post-processing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PLAN_VERSION = 1
ORIENTATIONS = ("LPS", "RAS")


class PlanError(ValueError):
    """A plans.json that cannot be used; the message names the file and the field."""


@dataclass
class Normalization:
    """CT normalisation: clip to foreground percentiles, then z-score."""

    clip_low: float = -200.0
    clip_high: float = 300.0
    mean: float = 60.0
    std: float = 60.0


@dataclass
class PostProcessing:
    """Lesion decision and connected-component filtering."""

    threshold: float = 0.5
    min_volume_mm3: float = 50.0
    min_confidence: float = 0.0


@dataclass
class Plan:
    """Target spacing (x, y, z mm), 2.5D patch, orientation, normalisation, thresholds."""

    target_spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    patch_size: tuple[int, int] = (192, 192)
    context_slices: int = 3
    orientation: str = "LPS"
    preset: str = "fast"
    batch_size: int = 4
    tile_step: float = 0.5
    body_threshold_hu: float = -500.0
    # Box-average each axis over the downsampling factor before resampling: linear
    # interpolation alone keeps the scanner noise of fine voxels at full strength.
    # Off by default until a training run shows it helps (one 16-minute phantom run
    # did not: benchmark/results/demo_training.md).
    smoothing: bool = False
    normalization: Normalization = field(default_factory=Normalization)
    postprocessing: PostProcessing = field(default_factory=PostProcessing)
    version: int = PLAN_VERSION

    def validate(self, source: str = "plan") -> "Plan":
        def fail(message):
            raise PlanError(f"{source}: {message}")

        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            fail(f"target_spacing must be three positive numbers (x, y, z mm), "
                 f"got {self.target_spacing}")
        if len(self.patch_size) != 2 or min(self.patch_size) <= 0:
            fail(f"patch_size must be two positive integers, got {self.patch_size}")
        if self.context_slices < 1 or self.context_slices % 2 == 0:
            fail(f"context_slices must be odd and positive, got {self.context_slices}")
        if self.orientation not in ORIENTATIONS:
            fail(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        if not 0 < self.tile_step <= 1:
            fail(f"tile_step is a fraction of the patch in (0, 1], got {self.tile_step}")
        if self.normalization.std <= 0 or self.normalization.clip_high <= self.normalization.clip_low:
            fail("normalization needs std > 0 and clip_high > clip_low")
        if not 0 < self.postprocessing.threshold < 1:
            fail(f"postprocessing.threshold must lie in (0, 1), got {self.postprocessing.threshold}")
        if self.version != PLAN_VERSION:
            fail(f"plan version {self.version} is not supported (this code reads {PLAN_VERSION})")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Plan":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"{source}: unknown field {unknown[0]!r}")
        values = dict(data)
        try:
            values["normalization"] = Normalization(**data.get("normalization", {}))
            values["postprocessing"] = PostProcessing(**data.get("postprocessing", {}))
        except TypeError as error:
            raise PlanError(f"{source}: {error}") from None
        if "target_spacing" in values:
            values["target_spacing"] = tuple(float(v) for v in values["target_spacing"])
        if "patch_size" in values:
            values["patch_size"] = tuple(int(v) for v in values["patch_size"])
        return cls(**values).validate(source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.validate(str(path)).to_dict(), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PlanError(f"{path}: no plans.json here") from None
        except (OSError, json.JSONDecodeError) as error:
            raise PlanError(f"{path}: cannot read the plan ({error})") from None
        if not isinstance(data, dict):
            raise PlanError(f"{path}: expected a JSON object")
        return cls.from_dict(data, str(path))
