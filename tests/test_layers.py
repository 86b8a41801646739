"""The layers hold, read from the imports: inference <- evaluation, training <- benchmark.

``inference`` (the container) imports nothing of the project's other packages;
``evaluation`` (the FLARE metric) nothing of the project at all; ``training`` only
``inference`` and ``evaluation``; nothing imports ``benchmark``.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("inference", "evaluation", "training", "benchmark")
ALLOWED = {
    "inference": {"inference"},
    "evaluation": {"evaluation"},
    "training": {"training", "inference", "evaluation"},
    "benchmark": set(PACKAGES),
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
