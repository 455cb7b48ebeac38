"""Commands of the serving package: serve, audit verify, audit replay, keys add."""

from __future__ import annotations

import json
import os
import re
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from features.cli_helpers import domain_errors_exit, fail_usage, package_app


class RoleChoice(StrEnum):
    """The roles a key can have (serving.api.keys.ROLES)."""

    scorer = "scorer"
    auditor = "auditor"
    admin = "admin"


app = package_app("The service: serve, audit, keys.")
"""The serving commands (part of `scf-risk`)."""


@app.command()
@domain_errors_exit
def serve(
    host: Annotated[
        str | None,
        typer.Option(help="Interface to listen on (default SCF_RISK_HOST or 127.0.0.1)."),
    ] = None,
    port: Annotated[
        int | None, typer.Option(min=0, max=65535, help="Port (default SCF_RISK_PORT or 8000).")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(min=1, help="Worker processes (default SCF_RISK_WORKERS or 1)."),
    ] = None,
    demo_data: Annotated[
        Path | None,
        typer.Option(
            help="A data folder: write an example request for one of its SMEs and print the "
            "curl command that scores it."
        ),
    ] = None,
) -> None:
    """Run the scoring service under uvicorn (model loaded once per worker at start)."""
    import uvicorn

    from serving.api.prometheus import MULTIPROC_ENV
    from serving.settings import Settings

    settings = Settings()
    host = host or settings.host
    port = settings.port if port is None else port
    workers = workers or settings.workers
    created = _keys_created(settings)
    # One OpenMP thread per worker: a request explains a few rows, where LightGBM's thread
    # start-up costs more than it saves (measured: 4 ms vs 16 ms per row on a busy machine).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # An unreachable tracking server should be noticed in seconds, not after MLflow's
    # default 7 retries with back-off (minutes): the service starts not ready and retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="scf-risk-metrics-")
    if demo_data is not None:
        _print_demo(demo_data, settings, host, port, created.get("scorer"))
    typer.echo(f"serving on http://{host}:{port} with {workers} worker(s); docs at /docs")
    uvicorn.run(
        "serving.api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
    )


audit = typer.Typer(help="Check and replay the audit trail.", no_args_is_help=True)
app.add_typer(audit, name="audit")


@audit.command("verify")
@domain_errors_exit
def audit_verify() -> None:
    """Re-derive the hash chain of every stored decision (SCF_RISK_AUDIT_DB); exit 1 if an
    edited, deleted or reordered record is found."""
    from serving.audit.store import AuditStore
    from serving.exceptions import AuditCorrupt
    from serving.settings import Settings

    store = AuditStore(Settings().audit_db)
    try:
        report = store.verify()
    finally:
        store.dispose()
    if not report.ok:
        raise AuditCorrupt(str(report))
    typer.echo(str(report))


@audit.command("replay")
@domain_errors_exit
def audit_replay(
    decision_id: Annotated[str, typer.Argument(help="The decision's id (a UUID).")],
) -> None:
    """Re-score a stored decision with its recorded model version and features; exit 1
    unless it matches exactly."""
    from serving.audit.store import AuditStore
    from serving.exceptions import AuditCorrupt
    from serving.schemas import DECISION_ID_PATTERN
    from serving.scoring import replay
    from serving.settings import Settings
    from training.bundle import load_model

    if not re.match(DECISION_ID_PATTERN, decision_id):
        fail_usage(f"DECISION_ID: expected a UUID, got {decision_id!r}")
    settings = Settings()
    store = AuditStore(settings.audit_db)
    try:
        stored = store.get(decision_id)
    finally:
        store.dispose()
    result = replay(stored, loader=load_model, tracking_uri=settings.mlflow_tracking_uri)
    if not result.matches:
        raise AuditCorrupt(str(result))
    typer.echo(str(result))


keys = typer.Typer(help="Manage API keys (SCF_RISK_API_KEYS).", no_args_is_help=True)
app.add_typer(keys, name="keys")


@keys.command("add")
@domain_errors_exit
def keys_add(
    role: Annotated[
        RoleChoice,
        typer.Option(
            help="scorer (lending systems), auditor (read decisions) or admin (reload).",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Who the key is for (default: the role).")
    ] = None,
) -> None:
    """Create an API key; only its hash is stored. The key is printed alone on the last line."""
    from serving.api.keys import Role, add_key
    from serving.settings import Settings

    settings = Settings()
    record, key = add_key(settings.api_keys, cast(Role, role.value), name)
    typer.echo(f"added key {record.key_id} ({record.role}, {record.name}) to {settings.api_keys}")
    typer.echo(key)


def _keys_created(settings: Any) -> dict[str, str]:
    """Create the development keys file if needed (printing it once); the new keys by role."""
    from serving.api.keys import ensure_development_keys

    if settings.api_keys.exists():
        return {}
    created = ensure_development_keys(settings.api_keys, development=settings.is_development)
    if created:
        typer.echo(f"created development API keys in {settings.api_keys.resolve()}")
        for role, key in created.items():
            typer.echo(f"  {role:8s} {key}")
        typer.echo("  (shown once; only their hashes are stored)")
    return {str(k): v for k, v in (created or {}).items()}


def _print_demo(data: Path, settings: Any, host: str, port: int, scorer_key: str | None) -> None:
    """Write an example `history` request for one SME of `data` and print its curl command."""
    from serving.demo import demo_request

    body = demo_request(data)
    out = Path("models/demo-request.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(body), encoding="utf-8")
    key = scorer_key or "$SCF_RISK_SCORER_KEY"
    typer.echo(f"\nexample request for SME {body['sme_id']} as of {body['as_of']} in {out}:")
    if scorer_key is None:
        typer.echo(
            "  (set SCF_RISK_SCORER_KEY to a scorer key: the one printed when the keys file was "
            "created, or a new one from `scf-risk keys add --role scorer`)"
        )
    typer.echo(
        f"  curl -s -X POST http://{host}:{port}/v1/scores -H 'Content-Type: application/json' "
        f'-H "X-API-Key: {key}" -d @{out}\n'
    )
