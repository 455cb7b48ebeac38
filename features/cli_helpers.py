"""The command-line helpers every package's commands share: domain errors -> exit 1, usage
errors -> exit 2, dates and engines checked with the option named, progress bars on stderr."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import typer

from features.exceptions import ScfRiskError

P = ParamSpec("P")
R = TypeVar("R")

EXIT_BAD_INPUT = 1
EXIT_USAGE = 2


def domain_errors_exit(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn a ScfRiskError raised by a command into its message on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except ScfRiskError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except FileNotFoundError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None

    return wrapper


def fail_usage(message: str) -> None:
    """A usage error (exit 2), for option combinations Typer cannot express."""
    typer.echo(f"usage error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def parse_date(value: str, option: str) -> date:
    """A YYYY-MM-DD option value, or a usage error naming `option`."""
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise typer.BadParameter(
            f"expected a date YYYY-MM-DD, got {value!r}", param_hint=option
        ) from None


def parquet_out(path: Path, option: str = "--out") -> Path:
    """`path` if it names a Parquet file (``.parquet``), else a usage error naming `option`:
    what is written is Parquet, and a file named ``.csv`` holding Parquet would mislead."""
    if path.suffix.lower() != ".parquet":
        raise typer.BadParameter(
            f"expected a .parquet file (the output is written as Parquet), got {path.name!r}",
            param_hint=option,
        )
    return path


def check_engine(engine: str, option: str = "--engine") -> str:
    """`engine` if it is one of `features.engines.ENGINES`, else a usage error naming `option`."""
    from features.engines import ENGINES

    if engine not in ENGINES:
        raise typer.BadParameter(
            f"expected one of {', '.join(ENGINES)}, got {engine!r}", param_hint=option
        )
    return engine


def progress_bar(
    desc: str, unit: str = "it"
) -> tuple[Callable[[int], Callable[[], object]], Callable[[], None]]:
    """A factory of tqdm bars on stderr (``make(total)`` returns the bar's step function) and the
    function that closes every bar it made."""
    from tqdm import tqdm

    bars: list[Any] = []

    def make(total: int) -> Callable[[], object]:
        bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)
        bars.append(bar)
        return lambda: bar.update(1)

    def close() -> None:
        for bar in bars:
            bar.close()

    return make, close


def package_app(help: str) -> typer.Typer:
    """A package's command group, as the `scf-risk` root adds it (serving/cli.py): plain help
    text wrapped by click (no rich panels, no ``<bool>`` type tags), no shell-completion options,
    no rich tracebacks (errors are messages and exit codes, see `domain_errors_exit`)."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
