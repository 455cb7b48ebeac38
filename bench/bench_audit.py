"""What record signing and checkpoints cost: single-score throughput with them and without them.

The issue's target (signing and checkpoints cost at most 10 % of single-score throughput against
the same build without them) is measured side by side in one run: a model is trained and
registered (as `bench_serve` does), then two `scf-risk serve --workers 2` of the same build run on
127.0.0.1 at the same time, each with its own SQLite audit store, one with
``SCF_RISK_AUDIT_SIGNING=true`` and one with ``false``. wrk drives explained single scores at 8
connections against one, then the other, in back-to-back pairs whose order alternates (off-on,
on-off: a drift of the machine's load falls on both sides alike). The cost is 1 - the median of
the pairs' on/off throughput ratios; the medians of each side and their ratio are reported too.
The servers' CPU time per score (user + system of the process tree) is a second view, less
sensitive to what else runs on the machine. Afterwards every signed record must verify with the
public keys and the checkpoints.

A last, smaller figure keeps the store alone in view: 8 threads appending to a store in process
(no HTTP, no model), where signing is a much larger share of the work than in the service.

Run: `python -m bench audit`.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.report import Report

SECTION = "audit signing"
PAIRS = 10  # off/on pairs of service loads
DURATION_S = 5
WORKERS = 2
STORE_THREADS = 8
STORE_SECONDS = 2.0
STORE_RUNS = 5


def run(report: Report) -> None:
    root = Path(tempfile.mkdtemp(prefix="scf-risk-bench-audit-"))
    try:
        service_cost(report, root)
        store_cost(report, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the service: explained, audited single scores ---------------------------------------------
@dataclass
class Side:
    """One side's runs: requests per second, and the server's CPU time per score (ms)."""

    rps: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


def service_cost(report: Report, root: Path) -> None:
    from bench.bench_serve import CONNECTIONS, train_model
    from tests.support.load import make_keys
    from tests.support.server import Server

    t0 = time.perf_counter()
    tracking, _, rows = train_model(root)
    print(f"  model trained and registered in {time.perf_counter() - t0:.0f} s", flush=True)
    scorer = make_keys(root / "keys.json")["scorer"]
    bodies = [json.dumps(r) for r in rows[:200]]
    sides = {False: Side(), True: Side()}
    with (
        Server(root, _env(root, tracking, signed=False), workers=WORKERS) as off,
        Server(root, _env(root, tracking, signed=True), workers=WORKERS) as on,
    ):
        servers = {False: off, True: on}
        for signed, srv in servers.items():
            _load(srv, bodies, scorer, signed, 2)  # warm-up
        for k in range(PAIRS):
            for signed in (False, True) if k % 2 == 0 else (True, False):
                rps, cpu_ms = _load(servers[signed], bodies, scorer, signed, DURATION_S)
                sides[signed].rps.append(rps)
                sides[signed].cpu_ms.append(cpu_ms)
    checked = _verify_signed(root)
    note = (
        f"wrk, {CONNECTIONS} connections, {DURATION_S} s x {PAIRS} per side, alternating; "
        f"{WORKERS} uvicorn workers each, SQLite audit store"
    )
    off_s, on_s = sides[False], sides[True]
    _add(report, "explained score throughput, signing off", off_s.rps, "req/s", note)
    _add(report, "explained score throughput, signing on", on_s.rps, "req/s", note)
    ratios = [a / b for a, b in zip(on_s.rps, off_s.rps, strict=True)]
    report.add(
        SECTION, "single-score throughput cost of signing and checkpoints",
        100 * (1 - statistics.median(ratios)), "%", runs=[100 * (1 - r) for r in ratios],
        target="<= 10 %",
        note="1 - median of the pairs' on/off ratios (each pair back to back); ratio of the "
        f"medians: {100 * (1 - statistics.median(on_s.rps) / statistics.median(off_s.rps)):.1f} "
        f"%; afterwards the signed store verified ({checked})",
    )  # fmt: skip
    cpu_note = "user + system CPU of the server and its workers over a run / the 200 responses"
    _add(report, "server CPU per score, signing off", off_s.cpu_ms, "ms", cpu_note)
    _add(report, "server CPU per score, signing on", on_s.cpu_ms, "ms", cpu_note)
    cpu = [b / a - 1 for a, b in zip(off_s.cpu_ms, on_s.cpu_ms, strict=True)]
    report.add(
        SECTION, "server CPU per score: extra with signing and checkpoints",
        100 * statistics.median(cpu), "%", runs=[100 * c for c in cpu],
        note="less sensitive than throughput to what else runs on the machine",
    )  # fmt: skip


def _load(
    srv: Any, bodies: list[str], scorer: str, signed: bool, seconds: int
) -> tuple[float, float]:
    """wrk against one server: its requests per second and its CPU milliseconds per score."""
    from bench.bench_serve import run_load

    before = _cpu_seconds(srv.proc.pid)
    load = run_load(f"{srv.url}/v1/scores", bodies, {"X-API-Key": scorer}, seconds)
    cpu = _cpu_seconds(srv.proc.pid) - before
    if load.ok != load.requests or not load.ok:
        raise RuntimeError(
            f"signing {'on' if signed else 'off'}: {load.requests - load.ok} of "
            f"{load.requests} requests failed; the comparison is void"
        )
    return load.rps, 1000 * cpu / load.ok


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its live children."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _verify_signed(root: Path) -> Any:
    """The signed side's store, verified with the public keys and checkpoints (else an error)."""
    from serving.audit.signing import PublicKeys
    from serving.audit.store import open_existing

    store = open_existing(str(root / "audit-on.db"))
    try:
        checked = store.verify(
            public_keys=PublicKeys.read(root / "audit-public-keys.json"),
            checkpoints=root / "audit-checkpoints.jsonl",
            require_records=True,
        )
    finally:
        store.dispose()
    if not checked.ok:
        raise RuntimeError(f"the signed store does not verify: {checked}")
    return checked


def _env(root: Path, tracking: str, *, signed: bool) -> dict[str, str]:
    from tests.support.load import server_env

    name = "on" if signed else "off"
    return server_env(
        root,
        tracking,
        f"sqlite:///{root / f'audit-{name}.db'}",
        SCF_RISK_AUDIT_SIGNING=str(signed).lower(),
        SCF_RISK_RELOAD_POLL_SECONDS="2",
    )


def _add(report: Report, name: str, runs: list[float], unit: str, note: str) -> float:
    value = statistics.median(runs)
    report.add(SECTION, name, value, unit, runs=runs, note=note)
    return value


# -- the store alone -----------------------------------------------------------------------------
def _body(i: int) -> dict[str, Any]:
    features = {f"f{j}": float(i * j % 97) for j in range(40)}
    return {
        "sme_id": f"S{i % 500:05d}",
        "as_of": "2024-01-31",
        "grade": "G05",
        "score": 612.5,
        "pd": 0.0123,
        "features": features,
        "contributions": {k: v / 10 for k, v in features.items()},
        "reasons": [{"code": "R01", "feature": "f1", "points": -3.2, "text": "x"}] * 4,
    }


def store_throughput(signed: bool, folder: Path) -> float:
    """Decisions per second committed by STORE_THREADS appenders over STORE_SECONDS."""
    from serving.audit.anchors import CheckpointLog
    from serving.audit.signing import Signer
    from serving.audit.store import AuditStore

    db = folder / f"store-{signed}-{time.monotonic_ns()}.db"
    signer = Signer.generate() if signed else None
    checkpoints = (
        CheckpointLog(folder / "store-cp.jsonl", signer, store="bench", every_records=1000)
        if signer is not None
        else None
    )
    store = AuditStore(f"sqlite:///{db}", signer=signer, checkpoints=checkpoints)
    store.ensure_schema()
    store.append([_body(0)])
    stop = threading.Event()
    counts = [0] * STORE_THREADS

    def work(k: int) -> None:
        i = 0
        while not stop.is_set():
            store.append([_body(i)])
            i += 1
        counts[k] = i

    threads = [threading.Thread(target=work, args=(k,)) for k in range(STORE_THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(STORE_SECONDS)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    store.dispose()
    return sum(counts) / elapsed


def store_cost(report: Report, root: Path) -> None:
    off: list[float] = []
    on: list[float] = []
    for _ in range(STORE_RUNS):
        off.append(store_throughput(False, root))
        on.append(store_throughput(True, root))
    note = f"the store alone: {STORE_THREADS} threads appending in process, no HTTP, no model"
    name = "store append throughput"
    report.add(SECTION, f"{name}, signing off", statistics.median(off), "/s", runs=off, note=note)
    report.add(SECTION, f"{name}, signing on", statistics.median(on), "/s", runs=on, note=note)
    cost = 100 * (1 - statistics.median(on) / statistics.median(off))
    report.add(
        SECTION, f"{name}: cost of signing", cost, "%",
        note="not the target's figure (that is the service's single-score throughput, above)",
    )  # fmt: skip
