"""Domain errors of the features package.

Only the edges (CLI, API) turn them into exit codes or HTTP responses.
"""

from __future__ import annotations

from dataclasses import dataclass


class ScfRiskError(Exception):
    """Base of every scf-risk domain error: bad input a person can act on (exit code 1)."""


@dataclass(frozen=True)
class Violation:
    """One broken rule of the data contract, located as precisely as possible."""

    table: str
    row: int | None  # 1-based data row as in the file (header not counted); None = whole table/file
    column: str | None
    rule: str
    value: str | None = None
    line: int | None = None  # 1-based line of a text (CSV) file where the row starts; else None

    def __str__(self) -> str:
        where = self.table
        if self.row is not None and self.line is not None:
            where += f", line {self.line} (data row {self.row})"
        elif self.row is not None:
            where += f", row {self.row}"
        if self.column is not None:
            where += f", column {self.column}"
        tail = f": {self.value!r}" if self.value is not None else ""
        return f"{where}: {self.rule}{tail}"


class ContractError(ScfRiskError):
    """A folder (or a request's history) breaks the data contract. Carries every violation found."""

    def __init__(self, violations: list[Violation], total: int | None = None) -> None:
        self.violations = violations
        self.total = total if total is not None else len(violations)
        heading = f"{self.total} data contract violation(s)"
        super().__init__(_listing(heading, violations, self.total, "violations"))


def _listing(heading: str, items: list[Violation], total: int, noun: str) -> str:
    """`heading:` then one line per item, and how many more there were beyond them."""
    lines = [str(v) for v in items]
    if total > len(items):
        lines.append(f"... and {total - len(items)} more {noun}".rstrip())
    return f"{heading}:\n" + "\n".join(lines)


class FeatureError(ScfRiskError):
    """A feature request that cannot be served: no population, as-of out of range, ..."""


class SourceError(ScfRiskError):
    """A source file handed to a converter (`features.examples`) is not what it should be.
    Carries every problem found (up to a cap), each naming line, column and value."""

    def __init__(self, source: str, problems: list[Violation], total: int | None = None) -> None:
        self.problems = problems
        self.total = total if total is not None else len(problems)
        heading = f"{source}: {self.total} problem(s)"
        super().__init__(_listing(heading, problems, self.total, "problems"))
