"""Commands of the features package: generate, validate, features."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from features.edge import domain_errors_exit


def _parse_date(value: str) -> date:
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise typer.BadParameter(f"expected a date YYYY-MM-DD, got {value!r}") from None


DateOpt = Annotated[str, typer.Option(help="ISO date YYYY-MM-DD.")]


def register(app: typer.Typer) -> None:
    """Add this package's commands to the `scf-risk` app."""

    @app.command()
    @domain_errors_exit
    def generate(
        out: Annotated[
            Path, typer.Option(help="Folder to write the contract's tables and truth.parquet into.")
        ],
        smes: Annotated[int, typer.Option(min=1, help="Number of SMEs.")] = 2000,
        cores: Annotated[int, typer.Option(min=1, help="Number of core enterprises.")] = 20,
        months: Annotated[int, typer.Option(min=1, help="Months of history to simulate.")] = 36,
        start: Annotated[str, typer.Option(help="First day simulated, YYYY-MM-DD.")] = "2022-01-01",
        seed: Annotated[
            int, typer.Option(help="Random seed: same seed, byte-identical tables.")
        ] = 1,
    ) -> None:
        """Simulate a supply chain (cores, SMEs, invoices, inventory, loans) with ground truth."""
        from features.simulate import SimConfig, generate_to_folder

        config = SimConfig(
            n_smes=smes, n_cores=cores, months=months, start=_parse_date(start), seed=seed
        )
        generate_to_folder(config, out)

    @app.command()
    @domain_errors_exit
    def validate(
        data: Annotated[Path, typer.Argument(help="Folder of NAME.csv / NAME.parquet tables.")],
    ) -> None:
        """Check a folder against the data contract; exit 1 listing every violation."""
        from features.io import load_tables

        tables = load_tables(data)
        for name, frame in tables.frames().items():
            typer.echo(f"{name}: {len(frame):,} rows")
        typer.echo(f"{data}: valid")
