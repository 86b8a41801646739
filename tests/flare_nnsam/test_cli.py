"""The flare-nnsam command: each subcommand reached, its help under its own name, and
only the modules of the command that runs imported."""

import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from flare_nnsam.cli import COMMANDS, main

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_is_installed_with_its_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["flare-nnsam"] == "flare_nnsam.cli:main"
    assert "flare_nnsam*" in project["tool"]["setuptools"]["packages"]["find"]["include"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    for name in ("predict", "train", "evaluate", "profile"):
        assert f"\n  {name} " in shown


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_commands_help_carries_its_name(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: flare-nnsam {command} ")


def test_an_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["segment"])
    assert exit_.value.code == 2
    assert "invalid choice: 'segment'" in capsys.readouterr().err


def test_a_commands_exit_code_comes_back(tmp_path):
    assert main(["predict", "-i", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path)]) == 2
    assert main(["evaluate", "--pred", str(tmp_path / "a"), "--gt", str(tmp_path / "b")]) != 0


def test_predict_imports_neither_training_nor_the_benchmarks_nor_torch():
    code = ("import sys\n"
            "from flare_nnsam.cli import main\n"
            "try:\n    main(['predict', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('training', 'benchmark', 'torch', 'evaluation', "
            "'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == "[]"


def test_a_command_whose_extra_is_missing_says_which_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)  # import scipy now fails, as uninstalled
    monkeypatch.delitem(sys.modules, "evaluation.evaluate", raising=False)
    monkeypatch.delitem(sys.modules, "evaluation.metrics", raising=False)
    assert main(["evaluate", "--pred", "a", "--gt", "b"]) == 2
    assert "needs scipy, which is not installed: pip install 'flare-nnsam[train]'" in \
        capsys.readouterr().err
