"""Who measured what, with which weights, where and when: the stamp on every benchmark table
and file name, and how the results show a path or a command line."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmark" / "results"
DEFAULT_WEIGHTS = ROOT / "weights"


def results_dir(group: str) -> Path:
    """The default folder of a group's results: ``benchmark/results/<group>``."""
    return RESULTS / group


def display_path(path: str | Path) -> str:
    """A path as results may show it: relative to the repository, else its last parts."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return f".../{path.name}"


def shown_command(argv: Sequence[str]) -> str:
    """A command line as results show it: no absolute paths of this machine."""
    return " ".join(shlex.quote(display_path(a) if Path(a).is_absolute() else str(a))
                    for a in argv)


def weights_note(folder: Path | None) -> dict:
    """Preset and provenance of a weights folder (model.json), for the results' header."""
    folder = Path(folder or DEFAULT_WEIGHTS)
    try:
        info = json.loads((folder / "model.json").read_text())
    except (OSError, json.JSONDecodeError):
        info = {}
    trained = info.get("trained")
    if trained is None and info.get("source") == "python -m training export":
        trained = True  # exported from a training checkpoint (before model.json said so)
    return {"path": display_path(folder), "preset": info.get("preset", "unknown"),
            "trained": trained, "note": info.get("note", "")}


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_names() -> list[str]:
    """GPU names through NVML (no torch import); empty without a driver or nvidia-ml-py."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


def git_revision() -> str:
    """Short commit of the working tree, ``+dirty`` when it has uncommitted changes."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty=+dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() or "unknown"


def stamp() -> dict:
    """Machine, software and date of a measurement."""
    now = dt.datetime.now(dt.timezone.utc)
    memory_gb = None
    try:
        import psutil

        memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "date": now.strftime("%Y-%m-%d"),
        "time_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "gpus": gpu_names(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "load_average": [round(v, 2) for v in load] if load else None,
        "revision": git_revision(),
    }


def describe(s: dict) -> str:
    """One line for a table header: CPU, cores, memory, GPU, date, load."""
    gpu = ", ".join(s["gpus"]) if s["gpus"] else "no GPU"
    parts = [f"{s['cpu']} ({s['cores']} cores)"]
    if s.get("memory_gb"):
        parts.append(f"{s['memory_gb']} GiB RAM")
    parts += [gpu, f"{s['os']}, Python {s['python']}", f"measured {s['time_utc']}",
              f"commit {s['revision']}"]
    if s.get("load_average"):
        parts.append("load average before the run " + "/".join(f"{v:g}" for v in s["load_average"]))
    return "; ".join(parts)


def slug(s: dict, device: str = "auto") -> str:
    """File-name stamp: the device that did the work and the date,
    ``gpu-<name>_<YYYY-MM-DD>`` or ``cpu-<name>-<cores>c_<YYYY-MM-DD>``.

    ``device`` "cpu" names the CPU even on a machine with a GPU.
    """
    if s["gpus"] and device != "cpu":
        device = "gpu-" + _slugify(s["gpus"][0])
    else:
        device = f"cpu-{_slugify(s['cpu'])}-{s['cores']}c"
    return f"{device}_{s['date']}"


def _slugify(text: str) -> str:
    text = re.sub(r"\((tm|r)\)|\b(cpu|processor|nvidia)\b|@.*$", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "unknown"

