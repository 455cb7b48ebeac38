"""Sustained load on the real service: 16 keep-alive connections against 2 uvicorn workers, with
the SQLite audit store and again with PostgreSQL. Zero errors, and exactly one audit record per
acknowledged decision (the client keeps every 200's decision ids; the store must hold the same
set, and its hash chain must verify). And `scf-risk audit verify`, run 20 times per store while
the workers write, finds the chain intact every time (no false alarm).

The issue's full run is 60 s per store; that is `make bench` (bench/bench_serve.py runs the same
`run_load` through `load_scenario`). Here the same load is bounded to `LOAD_SECONDS` per store.
One server per store serves both tests: the verify runs first, on the fresh store; the load test
then counts only what its own run added (ids, chain records, metrics), and verifies the whole
chain.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from serving.commands import app
from tests.support.load import (
    LoadGenerator,
    StressServer,
    feature_rows,
    make_keys,
    mixed_bodies,
    postgres_database,
    require_postgres,
    run_load,
    server_env,
)
from tests.support.models import Registered

LOAD_SECONDS = 15
CONNECTIONS = 16
WORKERS = 2
VERIFY_RUNS = 20
VERIFY_CONNECTIONS = 2  # commits during every run, while the chain (and each run) stays short
VERIFY_PAUSE_S = 0.02  # each connection waits after a response: at most about 100 decisions a
# second however fast the service, so that the chain, and each verify run over all of it, stays
# short (unpaced, a faster service grew it so fast that 20 runs did not fit in the deadline)
VERIFY_DEADLINE_S = 120


@dataclass(frozen=True)
class Served:
    """A running server of this module, its keys (role -> secret), audit URL and environment."""

    srv: StressServer
    keys: dict[str, str]
    url: str
    env: dict[str, str]


STORES = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="module", params=STORES)
def served(
    request: pytest.FixtureRequest, workdir: Path, registered: Registered
) -> Iterator[Served]:
    """A 2-worker server on a fresh audit store (a SQLite file, or a database of its own on the
    PostgreSQL test server), checkpointing every 0.5 s; the load test and the verify test of a
    store run against the same server, the verify test first. Its log holds no traceback, shut
    down included."""
    folder = workdir / request.param
    folder.mkdir()
    with audit_url(request.param, folder) as url:
        keys = make_keys(folder / "keys.json")
        env = server_env(
            folder, registered.tracking_uri, url, SCF_RISK_CHECKPOINT_EVERY_SECONDS="0.5"
        )
        with StressServer(folder, env, workers=WORKERS) as srv:
            srv.wait_workers(WORKERS)
            yield Served(srv, keys, url, env)
        assert "Traceback" not in srv.output(), srv.output()[-3000:]


@contextmanager
def audit_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """A fresh audit store's URL: a SQLite file, or a database of its own on the PostgreSQL
    test server (dropped afterwards)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
        return
    with postgres_database(require_postgres()) as db:
        yield db.url


@pytest.mark.slow
def test_audit_verify_while_the_service_writes_gives_no_false_alarm(
    served: Served, registered: Registered
) -> None:
    """Run `scf-risk audit verify` (the command, in this process: its own read-only engine)
    VERIFY_RUNS times while two workers commit decisions and checkpoints."""
    srv, env = served.srv, served.env
    bodies = mixed_bodies(feature_rows(registered.panel, 60), batch_every=0)
    outputs: list[tuple[int, str]] = []
    took: list[float] = []
    load = LoadGenerator(
        srv.url,
        bodies,
        {"X-API-Key": served.keys["scorer"]},
        connections=VERIFY_CONNECTIONS,
        pause=VERIFY_PAUSE_S,
    )
    with load:
        time.sleep(1)  # decisions and a first checkpoint in the store
        while len(outputs) < VERIFY_RUNS and load.now() < VERIFY_DEADLINE_S:
            t0 = time.perf_counter()
            ran = CliRunner().invoke(app, ["audit", "verify"], env=env)
            outputs.append((ran.exit_code, ran.output))
            took.append(round(time.perf_counter() - t0, 1))
        result = load.stop()
    assert not result.failures, result.summary()
    assert len(outputs) == VERIFY_RUNS, f"verify runs too slow: {len(outputs)} done, {took} s"
    for code, out in outputs:
        assert code == 0 and "audit chain intact" in out, out
        assert "no checkpoints file" not in out, out  # checked against the checkpoints too
    counts = [int(m.group(1)) for _, out in outputs if (m := re.search(r"intact: (\d+)", out))]
    print(f"{VERIFY_RUNS} verify runs over {counts[0]}..{counts[-1]} records took {took} s")
    assert counts == sorted(counts) and counts[-1] > counts[0], counts  # it wrote meanwhile


@pytest.mark.slow
def test_load_two_workers_zero_errors_one_record_per_decision(
    served: Served, registered: Registered
) -> None:
    rows = feature_rows(registered.panel, 60)
    s = run_load(
        served.srv,
        served.keys["scorer"],
        served.url,
        rows,
        seconds=LOAD_SECONDS,
        connections=CONNECTIONS,
    )
    r = s.result
    print(f"{r.summary()}; {r.rps:.1f} req/s, p50 {r.percentile_ms(50):.0f} ms, "
          f"p99 {r.percentile_ms(99):.0f} ms")  # fmt: skip
    assert s.errors == 0, r.summary()
    assert r.ok >= 100, f"too little load to prove anything: {r.summary()}"
    acked = r.acknowledged
    assert len(acked) == len(set(acked)), "a decision id was answered twice"
    assert not s.missing, f"{len(s.missing)} acknowledged decisions are not in the audit store"
    assert not s.unacknowledged, f"{len(s.unacknowledged)} stored decisions were never answered"
    assert len(s.stored) == len(acked)
    assert s.chain_ok and s.chain_records == len(acked)
    assert s.metrics_decisions == len(acked)  # both workers' counters, aggregated
    assert "Traceback" not in s.log, s.log[-3000:]
