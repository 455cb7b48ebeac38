"""The command line's composition root: each package's commands, and only those, where expected."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from serving.cli import build_app

FEATURES = ("example", "generate", "validate", "features")
TRAINING = ("train", "compare", "promote")
SERVING = ("serve", "audit", "keys", "score", "monitor", "backtest", "monthly")


def _commands(module: str) -> set[str]:
    """The command names `python -m MODULE --help` lists."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "TERM": "dumb"},
    )
    assert done.returncode == 0, done.stderr
    return _listed(done.stdout)


def _listed(help_text: str) -> set[str]:
    """The command names under "Commands:" in a click help text."""
    lines = help_text.split("Commands:", 1)[1].splitlines()
    return {line.split()[0] for line in lines if line.startswith("  ") and line[2] != " "}


def test_the_root_lists_every_packages_commands() -> None:
    result = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert _listed(result.stdout) == set(FEATURES + TRAINING + SERVING)


def test_help_text_is_plain_and_wrapped() -> None:
    """No rich panels, no ``<bool>`` tags: click's own wrapping of the docstrings."""
    result = CliRunner().invoke(build_app(), ["train", "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0
    assert "│" not in result.stdout and "<bool>" not in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 100


def test_each_package_runs_only_its_own_commands() -> None:
    assert _commands("features") == set(FEATURES)
    assert _commands("training") == set(TRAINING)
    assert _commands("serving") == set(FEATURES + TRAINING + SERVING)  # the whole scf-risk
