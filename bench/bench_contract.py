"""Loading the data contract: 10 million invoice rows, from Parquet and from CSV.

For each format, a seeded synthetic valid folder (10M invoices between 200 cores and 100,000 SMEs,
and those enterprises) is written to a temporary folder; then each run loads it with
`features.io.load_tables` in a fresh subprocess, which reports its peak RSS (ru_maxrss) minus its
RSS once the libraries are imported, the returned frames' in-memory size
(`DataFrame.memory_usage(deep=True)`), their ratio (target: at most 3), and the load's wall and
CPU time. Medians of 3 runs. `python -m bench contract`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Report

N_INVOICES = 10_000_000
N_CORES = 200
N_SMES = 100_000
RUNS = 3
SEED = 20240601
SECTION = "data contract: load 10M invoices"


def write_folder(folder: Path, fmt: str, n_invoices: int = N_INVOICES, seed: int = SEED) -> None:
    """A valid contract folder (enterprises + invoices) in `fmt` ("parquet" or "csv")."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)

    def ids(prefix: str, n: int, width: int) -> pa.Array:
        digits = pc.utf8_lpad(pc.cast(pa.array(np.arange(1, n + 1)), pa.string()), width, "0")
        return pc.binary_join_element_wise(prefix, digits, "")

    cores, smes = ids("C", N_CORES, 5), ids("S", N_SMES, 7)
    everyone = pa.concat_arrays([cores, smes])  # cores first: index < N_CORES is a core
    enterprises = pa.table(
        {
            "enterprise_id": everyone,
            "role": pa.array(["core"] * N_CORES + ["sme"] * N_SMES),
            "industry": pc.take(
                pa.array(["steel", "autos", "retail", "food", "chemicals"]),
                pa.array(rng.integers(0, 5, N_CORES + N_SMES)),
            ),
            "founded_date": pa.array(
                np.datetime64("1980-01-01") + rng.integers(0, 14_000, N_CORES + N_SMES),
                type=pa.date32(),
            ),
        }
    )

    n = n_invoices
    sme = N_CORES + rng.integers(0, N_SMES, n)
    core = rng.integers(0, N_CORES, n)
    other_sme = N_CORES + (sme - N_CORES + 1 + rng.integers(0, N_SMES - 1, n)) % N_SMES
    kind = rng.random(n)  # receivable from a core / payable to a core / trade between SMEs
    seller = np.where(kind < 0.5, sme, np.where(kind < 0.8, core, sme))
    buyer = np.where(kind < 0.5, core, np.where(kind < 0.8, sme, other_sme))
    issue = np.datetime64("2021-01-01") + rng.integers(0, 1_095, n)
    amount = np.round(rng.lognormal(8.0, 1.0, n), 2) + 0.01
    paid = rng.random(n) < 0.85
    confirmed = rng.random(n) < 0.5
    invoices = pa.table(
        {
            "invoice_id": ids("INV", n, 9),
            "seller_id": everyone.take(pa.array(seller)),
            "buyer_id": everyone.take(pa.array(buyer)),
            "issue_date": pa.array(issue, type=pa.date32()),
            "due_date": pa.array(issue + rng.choice([30, 60, 90], n), type=pa.date32()),
            "amount": amount,
            "paid_date": pa.array(issue + rng.integers(0, 150, n), type=pa.date32(), mask=~paid),
            "paid_amount": pa.array(
                np.round(amount * rng.choice([1.0, 0.9], n, p=[0.95, 0.05]), 2), mask=~paid
            ),
            "disputed": rng.random(n) < 0.03,
            "confirmed_date": pa.array(
                issue + rng.integers(0, 10, n), type=pa.date32(), mask=~confirmed
            ),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("enterprises", enterprises), ("invoices", invoices)):
        if fmt == "parquet":
            pq.write_table(table, folder / f"{name}.parquet")
        else:
            pacsv.write_csv(table, folder / f"{name}.csv")


def _measure(folder: Path) -> dict[str, float]:
    """In this (fresh) process: load `folder` and measure memory and time."""
    import resource

    import psutil

    from features.io import load_tables

    baseline = psutil.Process().memory_info().rss
    start, cpu_start = time.perf_counter(), time.process_time()
    tables = load_tables(folder)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    size = sum(int(f.memory_usage(deep=True).sum()) for f in tables.frames().values())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "peak_above_baseline": float(peak - baseline),
        "frames_bytes": float(size),
        "rows": float(len(tables.invoices)),
    }


def _run_child(folder: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_contract", str(folder)],
        cwd=Path(__file__).resolve().parent.parent,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run(report: Report) -> None:
    """Write both folders, then load each RUNS times in subprocesses and report medians."""
    mib = 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="scf-risk-bench-contract-") as tmp:
        for fmt in ("parquet", "csv"):
            folder = Path(tmp) / fmt
            start = time.perf_counter()
            write_folder(folder, fmt)
            written = time.perf_counter() - start
            on_disk = sum(p.stat().st_size for p in folder.iterdir()) / mib
            runs = [_run_child(folder) for _ in range(RUNS)]
            if any(r["rows"] != N_INVOICES for r in runs):
                raise RuntimeError(f"{fmt}: expected {N_INVOICES} invoices, got {runs}")

            def median(key: str, runs: list[dict[str, Any]] = runs) -> tuple[float, list[float]]:
                values = [float(r[key]) for r in runs]
                return statistics.median(values), values

            ratio = [r["peak_above_baseline"] / r["frames_bytes"] for r in runs]
            note = f"{on_disk:,.0f} MiB on disk; written in {written:.1f} s"
            secs, secs_runs = median("seconds")
            report.add(SECTION, f"{fmt}: load wall time", secs, "s", runs=secs_runs, note=note)
            cpu, cpu_runs = median("cpu_seconds")
            report.add(
                SECTION,
                f"{fmt}: load CPU time (all threads)",
                cpu,
                "s",
                runs=cpu_runs,
                note="wall time is inflated when other work shares the cores",
            )
            peak, peak_runs = median("peak_above_baseline")
            report.add(
                SECTION,
                f"{fmt}: peak RSS above baseline",
                peak / mib,
                "MiB",
                runs=[p / mib for p in peak_runs],
            )
            size, _ = median("frames_bytes")
            report.add(SECTION, f"{fmt}: frames in memory", size / mib, "MiB")
            report.add(
                SECTION,
                f"{fmt}: peak / in-memory size",
                statistics.median(ratio),
                "x",
                runs=ratio,
                target="<= 3",
            )


if __name__ == "__main__":
    print(json.dumps(_measure(Path(sys.argv[1]))))
