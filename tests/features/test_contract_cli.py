"""`scf-risk validate DIR` through the assembled command line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from serving.cli import build_app
from tests.support.contract_folder import set_cell, write_folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under `folder` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
    }


def test_validate_a_good_folder_exits_0(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    before = snapshot(tmp_path)
    result = CliRunner().invoke(build_app(), ["validate", str(folder)])
    assert result.exit_code == 0, result.output
    assert "invoices: 4 rows" in result.output
    assert f"{folder}: valid for training and scoring" in result.output
    assert snapshot(tmp_path) == before


def test_validate_says_a_folder_without_loans_is_valid_for_scoring_only(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    (folder / "loans.csv").unlink()
    result = CliRunner().invoke(build_app(), ["validate", str(folder)])
    assert result.exit_code == 0, result.output
    assert f"{folder}: valid for scoring; training also needs loans" in result.output
    assert "valid for training" not in result.output


def test_validate_a_corrupted_copy_exits_1_naming_table_row_and_column(tmp_path: Path) -> None:
    folder = write_folder(tmp_path)
    set_cell(folder, "invoices", 3, "amount", "-12")
    set_cell(folder, "loans", 2, "maturity_date", "2024-13-01")
    before = snapshot(tmp_path)
    result = CliRunner().invoke(build_app(), ["validate", str(folder)])
    assert result.exit_code == 1
    assert "error: 2 data contract violation(s):" in result.output
    assert "invoices, line 4 (data row 3), column amount: must be > 0: '-12.0'" in result.output
    assert (
        "loans, line 3 (data row 2), column maturity_date: "
        "not a date in the form YYYY-MM-DD: '2024-13-01'" in result.output
    )
    assert "valid" not in result.output.replace("violation", "")
    assert snapshot(tmp_path) == before


def test_validate_a_missing_folder_exits_1(tmp_path: Path) -> None:
    result = CliRunner().invoke(build_app(), ["validate", str(tmp_path / "absent")])
    assert result.exit_code == 1
    assert "data folder not found" in result.output
