"""The `scf-risk` console script: the composition root of the command line.

Each package declares its own Typer app (`features.cli.app`, `training.cli.app`,
`serving.commands.app`, `serving.portfolio.commands.app`); the root adds them here, explicitly, so
that a missing module is an import error rather than a command that silently disappears.
"""

from __future__ import annotations

import typer

from features import cli as features_cli
from serving import commands as serving_cli
from serving.portfolio import commands as portfolio_cli
from training import cli as training_cli

PACKAGE_APPS: tuple[typer.Typer, ...] = (
    features_cli.app,
    training_cli.app,
    serving_cli.app,
    portfolio_cli.app,
)


def build_app() -> typer.Typer:
    """The `scf-risk` app: every package's commands at the top level."""
    app = typer.Typer(
        name="scf-risk",
        help="Credit risk scoring for SMEs in supply chains.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
    )
    for package_app in PACKAGE_APPS:
        app.add_typer(package_app)
    return app


def main() -> None:
    build_app()()
