"""The layers hold, read from the imports: inference <- evaluation, training <- benchmark
<- flare_nnsam.

``inference`` (the container) imports nothing of the project's other packages;
``evaluation`` (the FLARE metric) nothing of the project at all; ``training`` only
``inference`` and ``evaluation``; nothing imports ``benchmark`` but the command
dispatcher ``flare_nnsam``, which stands above all four and which nothing imports. Inside
``inference`` no module imports itself through others: each room can be read without the
ones after it.
"""

import ast
import sys
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


def direct_imports(path: Path) -> set[str]:
    """Every module name ``path`` imports, with each ``from X import Y`` also as ``X.Y``
    (``Y`` may be a module), imports inside functions included: any of them may run."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def import_cycle(package: str) -> list[str] | None:
    """One chain of ``package``'s modules that imports its own start again, or None."""
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts): path
               for path in sorted((ROOT / package).rglob("*.py"))}
    graph = {name: sorted(direct_imports(path) & set(modules) - {name})
             for name, path in modules.items()}
    done, chain = set(), []

    def visit(name):
        chain.append(name)
        for other in graph[name]:
            if other in chain:
                return chain[chain.index(other):] + [other]
            if other not in done and (cycle := visit(other)):
                return cycle
        chain.pop()
        done.add(name)
        return None

    return next((cycle for name in graph if name not in done and (cycle := visit(name))), None)


@pytest.mark.parametrize("package", ["inference"])
def test_no_module_of_the_runtime_imports_itself_through_others(package):
    assert import_cycle(package) is None


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    for name, imports in (("a", "from pkg.b import f"), ("b", "import pkg.c"),
                          ("c", "def g():\n    from pkg import a"), ("d", "import pkg.a")):
        (tmp_path / "pkg").mkdir(exist_ok=True)
        (tmp_path / "pkg" / f"{name}.py").write_text(imports + "\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_cycle("pkg") == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (tmp_path / "pkg" / "c.py").write_text("import os\n")
    assert import_cycle("pkg") is None


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
        todo += direct_imports(path)
    return {name for name in seen if name.startswith("inference.")}


# What flare-nnsam predict and the Python API add to the runtime.
SCAN_MODULES = {"inference.scans", "inference.api", "inference.formats", "inference.dicom",
                "inference.lesions", "inference.recist", "inference.preview",
                "inference.dicom_seg", "inference.itk_images"}


def test_the_challenge_command_never_imports_the_scan_commands_modules():
    container = inference_modules_imported_by("inference.__main__")
    assert {"inference.predictor", "inference.nifti", "inference.supervise"} <= container
    assert container & SCAN_MODULES == set()


def test_each_command_of_the_dispatcher_is_a_module_below_it():
    from flare_nnsam.cli import COMMANDS

    for name, (module, _, _) in COMMANDS.items():
        assert module.split(".")[0] in set(PACKAGES) - {"flare_nnsam"}, name
        assert (ROOT / (module.replace(".", "/") + ".py")).exists(), name
