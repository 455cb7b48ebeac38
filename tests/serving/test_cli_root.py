"""The command line's composition root: each package's commands, and only those, where expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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


def test_a_bad_setting_is_named_with_exit_1_not_a_traceback(tmp_path: Path) -> None:
    """Every command that reads the environment's settings: a value that does not parse, or
    breaks its bounds, is one line naming the variable and the rule, and exit 1 (bad input)."""
    env = {"PATH": "/usr/bin:/bin", "TERM": "dumb", "HOME": str(tmp_path)}
    cases = [
        (["serve"], {"SCF_RISK_PORT": "eighty"}, "SCF_RISK_PORT: Input should be a valid integer"),
        (["serve"], {"SCF_RISK_BATCH_LIMIT": "0"}, "SCF_RISK_BATCH_LIMIT: Input should be greater"),
        (["audit", "verify"], {"SCF_RISK_EXPLAIN_METHOD": "magic"}, "SCF_RISK_EXPLAIN_METHOD"),
    ]
    for args, bad, named in cases:
        done = subprocess.run(
            [sys.executable, "-m", "serving", *args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env={**env, **bad, "PYTHONPATH": ":".join(sys.path)},
        )
        assert done.returncode == 1, (args, bad, done.stderr)
        assert named in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("error: invalid setting:"), done.stderr
