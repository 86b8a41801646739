"""The layers hold, read from the imports: inference <- evaluation, training <- benchmark
<- flare_nnsam.

``inference`` (the container) imports nothing of the project's other packages;
``evaluation`` (the FLARE metric) nothing of the project at all; ``training`` only
``inference`` and ``evaluation``; nothing imports ``benchmark`` but the command
dispatcher ``flare_nnsam``, which stands above all four and which nothing imports.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("inference", "evaluation", "training", "benchmark", "flare_nnsam")
ALLOWED = {
    "inference": {"inference"},
    "evaluation": {"evaluation"},
    "training": {"training", "inference", "evaluation"},
    "benchmark": {"benchmark", "training", "inference", "evaluation"},
    "flare_nnsam": set(PACKAGES),
}


def project_imports(path: Path) -> set[str]:
    """The project packages a module imports, anywhere in it (functions included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[0] for name in names} & set(PACKAGES)
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package):
    wrong = {str(path.relative_to(ROOT)): sorted(project_imports(path) - ALLOWED[package])
             for path in sorted((ROOT / package).rglob("*.py"))}
    assert {k: v for k, v in wrong.items() if v} == {}


def test_the_reader_of_imports_sees_them():
    sample = ROOT / "training" / "thresholds.py"
    assert project_imports(sample) >= {"inference", "evaluation"}


def inference_modules_imported_by(module: str) -> set[str]:
    """The ``inference`` modules ``module`` imports, directly or through others (imports
    inside functions included: any of them may run)."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        path = ROOT / (name.replace(".", "/") + ".py")
        if name in seen or not path.exists():
            continue
        seen.add(name)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                todo.append(node.module)
                todo += [f"{node.module}.{alias.name}" for alias in node.names]
    return {name for name in seen if name.startswith("inference.")}


# What flare-nnsam predict and the Python API add to the runtime.
SCAN_MODULES = {"inference.scans", "inference.api", "inference.formats", "inference.dicom",
                "inference.lesions", "inference.recist", "inference.preview",
                "inference.dicom_seg"}


def test_the_challenge_command_never_imports_the_scan_commands_modules():
    container = inference_modules_imported_by("inference.__main__")
    assert {"inference.predictor", "inference.nifti", "inference.supervise"} <= container
    assert container & SCAN_MODULES == set()


def test_each_command_of_the_dispatcher_is_a_module_below_it():
    from flare_nnsam.cli import COMMANDS

    for name, (module, _, _) in COMMANDS.items():
        assert module.split(".")[0] in set(PACKAGES) - {"flare_nnsam"}, name
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), name
