"""The audit store's throughput with record signing off and on (same build, same machine).

Eight threads append decisions one at a time to a fresh SQLite store (WAL, synchronous=FULL,
group commit), as the service's request threads do; runs alternate off/on, median of each.
Run: `python -m bench audit` (or `python -m bench.bench_audit` for the figures alone).
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.report import Report
from serving.audit.anchors import CheckpointLog
from serving.audit.signing import Signer
from serving.audit.store import AuditStore

SECTION = "audit signing"
THREADS = 8
SECONDS = 2.0
RUNS = 9


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


def throughput(signed: bool, folder: Path) -> float:
    """Decisions per second committed by THREADS appenders over SECONDS."""
    db = folder / f"audit-{signed}-{time.monotonic_ns()}.db"
    signer = Signer.generate() if signed else None
    checkpoints = (
        CheckpointLog(folder / "cp.jsonl", signer, store="bench", every_records=1000)
        if signer is not None
        else None
    )
    store = AuditStore(f"sqlite:///{db}", signer=signer, checkpoints=checkpoints)
    store.ensure_schema()
    store.append([_body(0)])
    stop = threading.Event()
    counts = [0] * THREADS

    def work(k: int) -> None:
        i = 0
        while not stop.is_set():
            store.append([_body(i)])
            i += 1
        counts[k] = i

    threads = [threading.Thread(target=work, args=(k,)) for k in range(THREADS)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(SECONDS)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    store.dispose()
    return sum(counts) / elapsed


def measure() -> tuple[list[float], list[float]]:
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(RUNS):
            off.append(throughput(False, Path(tmp)))
            on.append(throughput(True, Path(tmp)))
    return off, on


def run(report: Report) -> None:
    off, on = measure()
    cost = 1 - statistics.median(on) / statistics.median(off)
    report.add(SECTION, "decisions/s, signing off (median)", statistics.median(off), "/s")
    report.add(SECTION, "decisions/s, signing on (median)", statistics.median(on), "/s")
    report.add(SECTION, "throughput cost of signing", 100 * cost, "%", target="<= 10 %")


if __name__ == "__main__":
    off, on = measure()
    print("off:", [round(x) for x in off], "on:", [round(x) for x in on])
    print(f"cost: {100 * (1 - statistics.median(on) / statistics.median(off)):.1f} %")
