"""`scf-risk generate` says how many months an honest (leak-free) split needs when given fewer."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from features.cli import app


def test_generate_says_how_many_months_an_honest_split_needs(tmp_path: Path) -> None:
    args = ["generate", "--smes", "5", "--cores", "2", "--seed", "3"]
    short = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "short"), "--months", "6"])
    assert short.exit_code == 0, short.output
    assert "6 months are too few for an honest" in short.stderr and "needs 48" in short.stderr
    assert (tmp_path / "short" / "truth.parquet").is_file()
    enough = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "long"), "--months", "48"])
    assert enough.exit_code == 0, enough.output
    assert "too few" not in enough.stderr
