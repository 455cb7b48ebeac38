"""Command-line edge helpers shared by every package's commands: domain errors -> exit 1."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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
