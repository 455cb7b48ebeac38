"""The `scf-risk` console script: one Typer app fronting every package's commands."""

from __future__ import annotations

import importlib

import typer

COMMAND_MODULES = (
    "features.cli",
    "training.cli",
    "serving.commands",
    "serving.portfolio.commands",
)


def build_app() -> typer.Typer:
    """Assemble the command line from each package's `register(app)`."""
    app = typer.Typer(
        name="scf-risk",
        help="Credit risk scoring for SMEs in supply chains.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue  # that package's commands are not built yet
        module.register(app)
    return app


def main() -> None:
    build_app()()
