"""The command line's composition root: each package's commands, and only those, where expected."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from serving.cli import build_app

FEATURES = ("generate", "validate", "features")
TRAINING = ("train", "promote")
SERVING = ("serve", "audit", "keys", "score", "monitor", "backtest")


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
    names = set()
    for line in done.stdout.splitlines():
        cells = line.strip("│ ").split()
        if cells and cells[0] in (*FEATURES, *TRAINING, *SERVING):
            names.add(cells[0])
    return names


def test_the_root_lists_every_packages_commands() -> None:
    result = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    listed = {line.strip("│ ").split()[0] for line in result.stdout.splitlines() if "│ " in line}
    assert set(FEATURES + TRAINING + SERVING) <= listed


def test_each_package_runs_only_its_own_commands() -> None:
    assert _commands("features") == set(FEATURES)
    assert _commands("training") == set(TRAINING)
    assert _commands("serving") == set(FEATURES + TRAINING + SERVING)  # the whole scf-risk
