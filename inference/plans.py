"""The plan: how a dataset is seen by the network, saved as ``plans.json``.

Training fills it from a dataset fingerprint (``python -m training plan``); the
container reads it. One definition serves both, so a model is trained and served with
the same spacing, orientation, normalisation and post-processing.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from inference.folders import write_text_atomically
from inference.network_config import (
    DEFAULT_PATCH_SIZE,
    DEFAULT_PRESET,
    ModelConfigError,
    NetworkConfig,
    config_from_dict,
    config_to_dict,
    get_config,
)

PLAN_VERSION = 1
ORIENTATIONS = ("LPS", "RAS")
SPACING_RANGE_MM = (0.1, 20.0)
PATCH_RANGE = (8, 2048)
MIN_TILE_STEP = 0.05
DEFAULT_BATCH_SIZE = 4  # training samples per step (the paper's)


class PlanError(ValueError):
    """A plans.json that cannot be used; the message names the file and the field."""


def _section(kind, data, where: str):
    """A ``Normalization`` or ``PostProcessing`` from its JSON object; the values are
    checked by ``Plan.validate``."""
    names = [f.name for f in fields(kind)]
    if not isinstance(data, dict):
        raise PlanError(f"{where} must be an object of {', '.join(names)}, got {data!r}")
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise PlanError(f"{where}: unknown field {unknown[0]!r}")
    return kind(**data)


@dataclass
class Normalization:
    """CT normalisation: clip to foreground percentiles, then z-score."""

    clip_low: float = -200.0
    clip_high: float = 300.0
    mean: float = 60.0
    std: float = 60.0


@dataclass
class PostProcessing:
    """Lesion decision and connected-component filtering.

    The container takes these from plans.json and nowhere else. ``training plan`` writes
    them from these defaults and the dataset (``training.planning.initial_postprocessing``);
    ``training thresholds`` then replaces all three with what scored best on validation
    cases.
    """

    threshold: float = 0.5
    min_volume_mm3: float = 50.0
    min_confidence: float = 0.0


@dataclass
class Plan:
    """Target spacing (x, y, z mm), 2.5D patch, orientation, normalisation, thresholds."""

    target_spacing: tuple[float, float, float] = (2.0, 2.0, 3.0)
    patch_size: tuple[int, int] = DEFAULT_PATCH_SIZE
    context_slices: int = 3
    orientation: str = "LPS"
    preset: str = DEFAULT_PRESET
    batch_size: int = DEFAULT_BATCH_SIZE
    tile_step: float = 0.5
    body_threshold_hu: float = -500.0
    # Box-average each axis over the downsampling factor before resampling: linear
    # interpolation alone keeps the scanner noise of fine voxels at full strength.
    # Off by default: turn it on for a dataset where a training run shows that it helps
    # (benchmark/results/README.md has the runs that compared it).
    smoothing: bool = False
    normalization: Normalization = field(default_factory=Normalization)
    postprocessing: PostProcessing = field(default_factory=PostProcessing)
    # The whole network: every field of NetworkConfig. ``preset`` names the defaults it
    # was made from; a plan written before the network was stored gets them (with the
    # plan's patch and context slices), so old weights folders still load.
    network: NetworkConfig | None = None
    # Pretrained SAM encoder weights that training starts from (a frozen SAM kind); the
    # weights folder holds them afterwards, so the container never reads this file.
    sam_checkpoint: str | None = None
    version: int = PLAN_VERSION

    def __post_init__(self):
        if self.network is None:
            try:
                self.network = get_config(self.preset, patch_size=tuple(self.patch_size),
                                          in_channels=int(self.context_slices))
            except (ModelConfigError, TypeError, ValueError):
                pass  # validate() says what is wrong

    def validate(self, source: str = "plan") -> "Plan":
        """Every field within the range a CT model can use; PlanError names the first not.

        The ranges are wide (a model for any CT) but bounded: a 0.001 mm spacing or a
        tile step of 1e-4 would run out of memory or time instead of failing.
        """
        def fail(message):
            raise PlanError(f"{source}: {message}")

        def number(name, value, low, high, low_open=False, integer=False):
            kind = (int,) if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or \
                    not math.isfinite(value) or not (low < value if low_open else low <= value) \
                    or value > high:
                fail(f"{name} must be {'an integer' if integer else 'a number'} in "
                     f"{'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")

        def numbers(name, values, count, what):
            if not isinstance(values, (list, tuple)) or len(values) != count:
                fail(f"{name} must be {what}, got {values!r}")

        numbers("target_spacing", self.target_spacing, 3, "three numbers (x, y, z mm)")
        for value in self.target_spacing:
            number("target_spacing (mm)", value, *SPACING_RANGE_MM)
        numbers("patch_size", self.patch_size, 2, "two integers")
        for value in self.patch_size:
            number("patch_size", value, *PATCH_RANGE, integer=True)
        number("context_slices", self.context_slices, 1, 31, integer=True)
        if self.context_slices % 2 == 0:
            fail(f"context_slices must be odd, got {self.context_slices}")
        if self.orientation not in ORIENTATIONS:
            fail(f"orientation must be one of {ORIENTATIONS}, got {self.orientation!r}")
        number("batch_size", self.batch_size, 1, 1024, integer=True)
        number("tile_step (a fraction of the patch)", self.tile_step, MIN_TILE_STEP, 1)
        number("body_threshold_hu", self.body_threshold_hu, -1100, 500)
        if not isinstance(self.smoothing, bool):
            fail(f"smoothing must be true or false, got {self.smoothing!r}")
        norm = self.normalization
        for name in ("clip_low", "clip_high", "mean"):
            number(f"normalization.{name}", getattr(norm, name), -5000, 5000)
        number("normalization.std", norm.std, 0, 5000, low_open=True)
        if norm.clip_high <= norm.clip_low:
            fail(f"normalization needs clip_high > clip_low, got {norm.clip_high} <= "
                 f"{norm.clip_low}")
        post = self.postprocessing
        number("postprocessing.threshold", post.threshold, 0, 1, low_open=True)
        if post.threshold == 1:
            fail("postprocessing.threshold must lie in (0, 1), got 1")
        number("postprocessing.min_volume_mm3", post.min_volume_mm3, 0, math.inf)
        number("postprocessing.min_confidence", post.min_confidence, 0, 1)
        if self.network is None:
            fail(f"no network: unknown preset {self.preset!r} and no network fields")
        if tuple(self.network.patch_size) != tuple(self.patch_size) or \
                self.network.in_channels != self.context_slices:
            fail(f"network.patch_size {list(self.network.patch_size)} and network.in_channels "
                 f"{self.network.in_channels} must equal patch_size {list(self.patch_size)} and "
                 f"context_slices {self.context_slices}")
        if self.version != PLAN_VERSION:
            fail(f"plan version {self.version} is not supported (this code reads {PLAN_VERSION})")
        if self.sam_checkpoint is not None and not isinstance(self.sam_checkpoint, str):
            fail(f"sam_checkpoint must be a file name or null, got {self.sam_checkpoint!r}")
        return self

    def to_dict(self) -> dict:
        data = asdict(self)
        data["network"] = config_to_dict(self.network) if self.network is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "Plan":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PlanError(f"{source}: unknown field {unknown[0]!r}")
        values = dict(data)
        for name, kind in (("normalization", Normalization), ("postprocessing", PostProcessing)):
            values[name] = _section(kind, data.get(name, {}), f"{source}: {name}")
        try:
            if values.get("network") is not None:
                values["network"] = config_from_dict(values["network"], f"{source}: network")
        except ModelConfigError as error:
            raise PlanError(str(error)) from None
        for name in ("target_spacing", "patch_size"):  # JSON lists; validate checks the values
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values).validate(source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        text = json.dumps(self.validate(str(path)).to_dict(), indent=2) + "\n"
        return write_text_atomically(path, text)

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
