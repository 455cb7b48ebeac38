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
    from serving.api.protocol import HeaderDeadlineProtocol

    uvicorn.run(
        "serving.api.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="info",
        access_log=settings.access_log_on,
        http=HeaderDeadlineProtocol,
        timeout_keep_alive=settings.keep_alive_seconds,
        h11_max_incomplete_event_size=64 * 1024,
    )


audit = typer.Typer(help="Check and replay the audit trail.", no_args_is_help=True)
app.add_typer(audit, name="audit")


DbOption = Annotated[
    str | None,
    typer.Option(
        "--db",
        help="The audit database: a SQLAlchemy URL or a SQLite file path (default "
        "SCF_RISK_AUDIT_DB). Must exist and hold a chain; nothing is created.",
    ),
]
PublicKeysOption = Annotated[
    Path | None,
    typer.Option(help="The public keys file (default SCF_RISK_AUDIT_PUBLIC_KEYS)."),
]
CheckpointsOption = Annotated[
    Path | None,
    typer.Option(help="The checkpoints file (default SCF_RISK_AUDIT_CHECKPOINTS)."),
]


def _audit_inputs(
    db: str | None, public_keys: Path | None, checkpoints: Path | None
) -> tuple[Any, Any, Path]:
    """The read-only store, the public keys and the checkpoints file the audit tools use."""
    from serving.audit.signing import PublicKeys
    from serving.audit.store import open_existing
    from serving.settings import Settings

    settings = Settings()
    keys = PublicKeys.read(public_keys or settings.public_keys_path)
    store = open_existing(db or settings.audit_db)
    return store, keys, checkpoints or settings.checkpoints_path


@audit.command("verify")
@domain_errors_exit
def audit_verify(
    db: DbOption = None,
    public_keys: PublicKeysOption = None,
    checkpoints: CheckpointsOption = None,
) -> None:
    """Re-derive the hash chain of every stored decision from one snapshot, check every
    record's signature with the public keys and the chain against every signed checkpoint;
    exit 1 if a record was edited, deleted, reordered, forged or the chain truncated or rolled
    back (or if there is no chain to check)."""
    from serving.exceptions import AuditCorrupt

    store, keys, cps = _audit_inputs(db, public_keys, checkpoints)
    try:
        report = store.verify(public_keys=keys, checkpoints=cps, require_records=True)
    finally:
        store.dispose()
    if not report.ok:
        raise AuditCorrupt(str(report))
    if not cps.exists():
        typer.echo(
            f"warning: no checkpoints file at {cps}: a truncated or rolled-back chain cannot be "
            "told from an intact one (the service writes one every few seconds and at shutdown)",
            err=True,
        )
    typer.echo(str(report))


@audit.command("verify-receipt")
@domain_errors_exit
def audit_verify_receipt(
    file: Annotated[
        Path, typer.Argument(help="A JSON file: the receipt, or a whole score response.")
    ],
    db: DbOption = None,
    public_keys: PublicKeysOption = None,
    checkpoints: CheckpointsOption = None,
) -> None:
    """Prove a receipt's record is in the chain: its signature, the record it names, and the
    whole chain up to the newest checkpoint; exit 1 saying why not."""
    from serving.exceptions import AuditCorrupt

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AuditCorrupt(f"{file}: not a JSON file: {exc}") from None
    receipt = data.get("receipt", data) if isinstance(data, dict) else data
    store, keys, cps = _audit_inputs(db, public_keys, checkpoints)
    try:
        problems = store.check_receipt(receipt, keys)
        report = store.verify(public_keys=keys, checkpoints=cps) if not problems else None
    finally:
        store.dispose()
    if problems:
        raise AuditCorrupt(f"{file}: receipt NOT proven:\n  " + "\n  ".join(problems))
    assert report is not None
    if not report.ok:
        raise AuditCorrupt(f"{file}: the record is there, but the chain is not intact:\n{report}")
    typer.echo(
        f"{file}: receipt proven: record seq {receipt['sequence']} is in the chain, signed by "
        f"key {receipt['key_id']} ({report})"
    )


@audit.command("new-key")
@domain_errors_exit
def audit_new_key(
    out: Annotated[
        Path | None,
        typer.Option(help="Where to write the new private key (default the configured path)."),
    ] = None,
) -> None:
    """Create an audit signing key (0600) and add its public key to the public keys file; to
    rotate, write it to a new path and point SCF_RISK_AUDIT_SIGNING_KEY at it (old public keys
    stay, so old records keep verifying)."""
    from serving.audit.signing import new_signing_key
    from serving.settings import Settings

    settings = Settings()
    path = out or settings.signing_key_path
    signer = new_signing_key(path, settings.public_keys_path)
    typer.echo(
        f"created audit signing key {path} (key id {signer.key_id}); public key added to "
        f"{settings.public_keys_path}"
    )


@audit.command("replay")
@domain_errors_exit
def audit_replay(
    decision_id: Annotated[str, typer.Argument(help="The decision's id (a UUID).")],
    db: DbOption = None,
) -> None:
    """Re-score a stored decision with its recorded model version and features; exit 1
    unless it matches exactly."""
    from serving.audit.store import open_existing
    from serving.exceptions import AuditCorrupt
    from serving.schemas import DECISION_ID_PATTERN
    from serving.scoring import replay
    from serving.settings import Settings
    from training.bundle import load_model

    if not re.match(DECISION_ID_PATTERN, decision_id):
        fail_usage(f"DECISION_ID: expected a UUID, got {decision_id!r}")
    settings = Settings()
    store = open_existing(db or settings.audit_db)
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


@keys.command("list")
@domain_errors_exit
def keys_list() -> None:
    """List the keys (id, role, name, creation time); never the keys themselves."""
    from serving.api.keys import read_keys
    from serving.settings import Settings

    settings = Settings()
    records = read_keys(settings.api_keys)
    typer.echo(f"{len(records)} key(s) in {settings.api_keys}")
    typer.echo(f"{'KEY_ID':16s}  {'ROLE':8s}  {'CREATED':25s}  NAME")
    for r in records:
        dev = "  (development)" if r.development else ""
        typer.echo(f"{r.key_id:16s}  {r.role:8s}  {r.created_at:25s}  {r.name}{dev}")


@keys.command("revoke")
@domain_errors_exit
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The id of the key (from `keys list`).")],
) -> None:
    """Remove a key: running services refuse it within SCF_RISK_KEYS_RECHECK_SECONDS (1 s)."""
    from serving.api.keys import revoke_key
    from serving.settings import Settings

    settings = Settings()
    record = revoke_key(settings.api_keys, key_id)
    typer.echo(f"revoked key {record.key_id} ({record.role}, {record.name}) in {settings.api_keys}")


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
