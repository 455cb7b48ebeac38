"""Feature pipeline benchmark: a monthly panel at every month end of 36 months of simulated data.

Data: `features.simulate` with 20,000 SMEs x 36 months (cached under bench-out/features/), or
`SCF_BENCH_FEATURES_SMES` SMEs (targets: 20,000 in 60 s and 6 GB; 100,000 in 4 minutes and
8 GB; reported beside the figures). The generated folder can live elsewhere
(`SCF_BENCH_FEATURES_CACHE`, e.g. /tmp). Each measured run is a fresh subprocess doing what
`scf-risk features` does (validate + load, reference, panel, atomic Parquet write); its wall
time, CPU time (user + system of the process tree), peak memory (the whole process tree, Dask
workers and forked date workers included, polled every 50 ms; PSS, so pages shared after a fork
count once, with the per-process RSS sum in the note) and rows/s are reported, for the pandas
engine (dates on 2 forked processes, streamed to Parquet) and for Dask on a 2-worker
LocalCluster (`SCF_BENCH_FEATURES_ENGINES=pandas` or `=dask` measures one).

Peer: featuretools deep feature synthesis with cutoff times, on the same invoices and the same
(SME, as-of) rows, for a comparable subset of features (sum, count and mean of sales amounts over
90/180/365-day training windows), on the first `SCF_BENCH_FEATURES_PEER_SMES` SMEs. featuretools
1.31 needs pandas < 3, so it runs in its own venv under bench-out/ (created with pip on first use).
Ratio reported: featuretools seconds per (SME, date) row / ours, ours computing every catalog
feature of the same rows from the same SMEs' rows plus the reference.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import Report

SECTION = "features"
TARGETS = {20_000: ("<= 60 s", "<= 6 GB"), 100_000: ("<= 240 s", "<= 8 GB")}
"""Wall time and peak memory of the build by folder size (issue #17)."""
FEATURETOOLS_PINS = ("featuretools==1.31.0", "pandas<3", "pyarrow")


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def _dataset(root: Path, n_smes: int) -> Path:
    """The simulated folder (generated once per size; reused while its marker exists)."""
    from features.simulate import SimConfig, generate_to_folder

    folder = root / f"data-{n_smes}smes-36m-seed7"
    marker = folder / ".complete"
    if marker.exists():
        return folder
    config = SimConfig(
        n_smes=n_smes, n_cores=max(20, n_smes // 500), months=36, seed=7, progress=False
    )
    t0 = time.perf_counter()
    generate_to_folder(config, folder)
    marker.write_text(f"generated in {time.perf_counter() - t0:.1f} s\n", encoding="utf-8")
    return folder


def _tree_memory(root: Any) -> tuple[int, int]:
    """(RSS, PSS) of a process and its descendants, bytes. PSS counts a page shared by forked
    processes once in all (RSS counts it in each); RSS where PSS is not available."""
    import psutil

    rss = pss = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            info = p.memory_full_info()
        except psutil.AccessDenied:
            info = p.memory_info()
        except psutil.NoSuchProcess:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return rss, pss


def _measure(cmd: list[str]) -> tuple[float, float, dict[str, Any]]:
    """Run `cmd`; (wall s, peak memory of its process tree in GB, the JSON it printed last,
    with `peak_rss_gb` (RSS summed over the tree, shared pages counted per process),
    `peak_pss_gb` (the reported peak: each page once), `peak_pss_at` (when it was reached, Unix
    time) and `cpu_s` (user + system of the tree) added)."""
    import psutil

    load_average = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped descendants
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_rss = peak_pss = 0
    peak_at = 0.0
    while proc.poll() is None:
        try:
            rss, pss = _tree_memory(root)
        except psutil.NoSuchProcess:
            break
        if pss > peak_pss:
            peak_at = time.time()
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.05)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    info = json.loads(out.strip().splitlines()[-1])
    info["peak_rss_gb"], info["peak_pss_gb"] = peak_rss / 1e9, peak_pss / 1e9
    info["load_average"] = load_average
    info["peak_pss_at"] = peak_at
    info["cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, peak_pss / 1e9, info


def _peak_phase(info: dict[str, Any]) -> str:
    """The phase of a measured `_child` run during which its peak memory was reached."""
    end = info["started_at"]  # after the imports
    if info["peak_pss_at"] <= end:
        return "start-up"
    for phase in ("load", "reference", "prepare", "panel"):
        end += info.get(f"{phase}_s", 0.0)
        if info["peak_pss_at"] <= end:
            return phase
    return "closing"


def _child(engine: str, data: str, out: str, first: str, last: str) -> None:
    """One measured run (in a fresh process): what `scf-risk features` does, phase by phase.

    pandas: load, reference, prepare (own rows -> arrays; the tables released), panel (dates
    computed on 2 forked processes and written one row group each). dask: load, reference,
    prepare (each partition's own rows -> temporary Arrow files; the tables released), panel
    (2-worker LocalCluster; the partitions' rows to temporary files, written date by date)."""
    from features.engines import (
        prepare_dask_panel,
        prepare_panel,
        write_dask_inputs,
        write_features,
    )
    from features.io import load_tables
    from features.pipeline import month_ends
    from features.reference import build_reference

    started_at = time.time()
    t0 = time.perf_counter()
    tables = load_tables(Path(data))
    invoices = len(tables.invoices)
    t1 = time.perf_counter()
    reference = build_reference(tables)
    t2 = time.perf_counter()
    dates = month_ends(first, last)
    phases: dict[str, float] = {"load_s": t1 - t0, "reference_s": t2 - t1}
    if engine == "pandas":
        plan = prepare_panel(tables, dates, reference=reference)
        del tables
        t3 = time.perf_counter()
        rows = write_features(plan, out, jobs=2)
        phases |= {"prepare_s": t3 - t2, "panel_s": time.perf_counter() - t3}
    else:
        inputs = prepare_dask_panel(tables, dates, out, reference=reference, n_workers=2)
        del tables
        t3 = time.perf_counter()
        rows = write_dask_inputs(inputs, out, n_workers=2)
        phases |= {"prepare_s": t3 - t2, "panel_s": time.perf_counter() - t3}
    import pyarrow.parquet as pq

    columns = len(pq.read_schema(out).names)
    with tempfile.TemporaryDirectory() as tmp:  # after the timed phases
        ref_mb = sum(f.stat().st_size for f in reference.to_dir(tmp).iterdir()) / 1e6
    print(
        json.dumps(
            {
                "rows": rows,
                "columns": columns,
                "invoices": invoices,
                **phases,
                "reference_mb": ref_mb,
                "started_at": started_at,
            }
        )
    )


def _ours_on_subset(data: str, panel_file: str, smes: int, out: str) -> None:
    """Our per-row cost on the peer's subset: own rows of the first `smes` SMEs + reference."""
    import pandas as pd

    from features.engines import split_tables
    from features.io import load_tables
    from features.own import day_of
    from features.reference import build_reference, feature_rows, sme_ids_of

    tables = load_tables(Path(data))
    reference = build_reference(tables)
    subset = sme_ids_of(tables)[:smes]
    panel = pd.read_parquet(panel_file, columns=["sme_id", "as_of"])
    rows = panel[panel["sme_id"].isin(subset)]
    own = split_tables(tables, [subset])[0]
    days = sorted({day_of(d) for d in rows["as_of"].unique()})
    t0 = time.perf_counter()
    ours = feature_rows(own, days, reference, sme_ids=subset, population_only=True)
    elapsed = time.perf_counter() - t0
    cols = [
        "sme_id",
        "as_of",
        *(f"{k}_{w}d" for k in ("sales_amount", "sales_count") for w in (90, 180, 365)),
    ]
    ours[cols].to_parquet(out, index=False)
    sales = own.invoices[own.invoices["seller_id"].isin(subset)]
    sales = sales[["invoice_id", "seller_id", "issue_date", "amount"]].rename(
        columns={"seller_id": "sme_id"}
    )
    sales.to_parquet(Path(out).with_name("peer-sales.parquet"), index=False)
    rows.to_parquet(Path(out).with_name("peer-cutoffs.parquet"), index=False)
    print(json.dumps({"rows": len(ours), "seconds": elapsed, "features": len(ours.columns) - 2}))


FEATURETOOLS_SCRIPT = """
import json, sys, time, warnings
import pandas as pd, featuretools as ft
warnings.filterwarnings("ignore")
folder = sys.argv[1]
sales = pd.read_parquet(folder + "/peer-sales.parquet")
cutoffs = pd.read_parquet(folder + "/peer-cutoffs.parquet").rename(columns={"as_of": "time"})
sales["sme_id"] = sales["sme_id"].astype(str); sales["invoice_id"] = sales["invoice_id"].astype(str)
cutoffs["sme_id"] = cutoffs["sme_id"].astype(str)
smes = pd.DataFrame({"sme_id": sorted(cutoffs["sme_id"].unique())})
t0 = time.perf_counter()
es = ft.EntitySet("scf")
es.add_dataframe(dataframe_name="smes", dataframe=smes, index="sme_id")
es.add_dataframe(
    dataframe_name="sales", dataframe=sales, index="invoice_id", time_index="issue_date"
)
es.add_relationship("smes", "sme_id", "sales", "sme_id")
frames = []
for w in (90, 180, 365):
    fm, _ = ft.dfs(entityset=es, target_dataframe_name="smes", cutoff_time=cutoffs,
                   agg_primitives=["sum", "count", "mean"], trans_primitives=[],
                   training_window=f"{w} days", cutoff_time_in_index=True, max_depth=1)
    frames.append(fm.add_suffix(f"_{w}d"))
elapsed = time.perf_counter() - t0
out = pd.concat(frames, axis=1).reset_index()
out.to_parquet(folder + "/peer-featuretools.parquet", index=False)
print(json.dumps({"rows": len(out), "seconds": elapsed, "features": len(out.columns) - 2,
                  "featuretools": ft.__version__, "pandas": pd.__version__}))
"""


def _featuretools_python(root: Path) -> Path:
    """A venv with featuretools (pandas < 3) under bench-out/, created on first use."""
    venv = root / "featuretools-venv"
    python = venv / "bin" / "python"
    marker = venv / ".complete"
    if not marker.exists() or marker.read_text(encoding="utf-8") != " ".join(FEATURETOOLS_PINS):
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *FEATURETOOLS_PINS],
            check=True,
            capture_output=True,
            text=True,
        )
        marker.write_text(" ".join(FEATURETOOLS_PINS), encoding="utf-8")
    return python


def _peer(report: Report, root: Path, data: Path, panel_file: Path, smes: int) -> None:
    import numpy as np
    import pandas as pd

    folder = root / "peer"
    folder.mkdir(parents=True, exist_ok=True)
    ours_file = folder / "peer-ours.parquet"
    _, _, ours = _measure(
        [sys.executable, "-m", "bench.bench_features", "--subset", str(data), str(panel_file),
         str(smes), str(ours_file)]
    )  # fmt: skip
    try:
        python = _featuretools_python(root)
        script = folder / "featuretools_dfs.py"
        script.write_text(FEATURETOOLS_SCRIPT, encoding="utf-8")
        wall, peak, peer = _measure([str(python), str(script), str(folder)])
    except (subprocess.CalledProcessError, RuntimeError) as exc:
        detail = " ".join((getattr(exc, "stderr", None) or str(exc)).split())
        report.add(
            SECTION, "featuretools peer", float("nan"), "s", note=f"could not run: {detail[-300:]}"
        )
        return
    ours_per_row = ours["seconds"] / max(ours["rows"], 1)
    peer_per_row = peer["seconds"] / max(peer["rows"], 1)
    note = (
        f"{smes} SMEs, {peer['rows']} rows; featuretools {peer['featuretools']} (pandas "
        f"{peer['pandas']}): {peer['features']} features (sum/count/mean of sales, 3 windows); "
        f"ours: all {ours['features']} catalog features"
    )
    report.add(SECTION, "peer rows", peer["rows"], "rows", note=note)
    report.add(
        SECTION, "featuretools DFS time", peer["seconds"], "s", note=f"peak RSS {peak:.2f} GB"
    )
    report.add(SECTION, "ours on the same rows", ours["seconds"], "s")
    report.add(
        SECTION,
        "featuretools / ours, time per (SME, date) row",
        peer_per_row / ours_per_row,
        "x",
        note="> 1: ours is faster while computing every catalog feature",
    )
    # the comparable features must agree
    ft_frame = pd.read_parquet(folder / "peer-featuretools.parquet")
    ft_frame = ft_frame.rename(columns={"time": "as_of"})
    ours_frame = pd.read_parquet(ours_file)
    ft_frame["sme_id"] = ft_frame["sme_id"].astype("str")
    ft_frame["as_of"] = pd.to_datetime(ft_frame["as_of"]).astype("datetime64[ns]")
    merged = ours_frame.merge(ft_frame, on=["sme_id", "as_of"], how="inner")
    agree = []
    for w in (90, 180, 365):
        agree.append(
            np.isclose(merged[f"sales_amount_{w}d"], merged[f"SUM(sales.amount)_{w}d"].fillna(0))
        )
        agree.append(
            merged[f"sales_count_{w}d"].to_numpy() == merged[f"COUNT(sales)_{w}d"].to_numpy()
        )
    share = float(np.mean(np.concatenate(agree))) if len(merged) else float("nan")
    report.add(
        SECTION,
        "featuretools values equal to ours",
        share * 100,
        "%",
        note=f"{len(merged)} rows compared",
    )
    _ = wall


def run(report: Report) -> None:
    """Measure the pandas and Dask engines and the featuretools peer (see module docstring)."""
    import pandas as pd

    from features.io import load_tables
    from features.pipeline import data_range, month_ends

    smes = _env_int("SCF_BENCH_FEATURES_SMES", 20_000)
    runs = _env_int("SCF_BENCH_FEATURES_RUNS", 1)
    peer_smes = _env_int("SCF_BENCH_FEATURES_PEER_SMES", 2_000)
    cache = os.environ.get("SCF_BENCH_FEATURES_CACHE")
    root = Path(cache) if cache else (report.out_dir / "features").resolve()
    root.mkdir(parents=True, exist_ok=True)
    data = _dataset(root, smes)
    start, end = data_range(load_tables(data))
    dates = month_ends(start, end)  # every month end of the 36 months (issue #17)
    first, last = dates[0].date().isoformat(), dates[-1].date().isoformat()
    panel_file = root / "panel.parquet"
    at = 20_000 if smes <= 20_000 else 100_000
    wall_target, memory_target = (f"{goal} at {at:,} SMEs" for goal in TARGETS[at])
    engines = os.environ.get("SCF_BENCH_FEATURES_ENGINES", "pandas,dask").split(",")
    for engine in engines:
        walls, peaks, infos = [], [], []
        for _ in range(runs):
            wall, peak, info = _measure(
                [sys.executable, "-m", "bench.bench_features", "--child", engine, str(data),
                 str(panel_file), first, last]
            )  # fmt: skip
            walls.append(wall)
            peaks.append(peak)
            infos.append(info)
        info = infos[-1]
        size = f"{smes} SMEs x 36 months, {info['invoices']:,} invoices, {len(dates)} month ends"
        label = "pandas (2 forked processes)" if engine == "pandas" else "dask (2 workers)"
        wall = statistics.median(walls)
        load = ", ".join(f"{i['load_average']:.1f}" for i in infos)
        busy = f"1-min load average at start {load} on {os.cpu_count()} cores"
        report.add(SECTION, f"{label}: wall time", wall, "s", runs=walls, target=wall_target,
                   note=f"{size}; {busy}")  # fmt: skip
        report.add(SECTION, f"{label}: peak memory", max(peaks), "GB", runs=peaks,
                   target=memory_target,
                   note=f"process tree, PSS (shared pages counted once); RSS summed per "
                   f"process {max(i['peak_rss_gb'] for i in infos):.2f} GB; reached in the "
                   f"{_peak_phase(infos[peaks.index(max(peaks))])} phase")  # fmt: skip
        cpu = [i["cpu_s"] for i in infos]
        report.add(SECTION, f"{label}: CPU time", statistics.median(cpu), "s", runs=cpu,
                   note="user + system, process tree (wall time needs free cores)")  # fmt: skip
        report.add(SECTION, f"{label}: rows/s", info["rows"] / wall, "rows/s",
                   note=f"{info['rows']:,} rows x {info['columns']} columns")  # fmt: skip
        for phase in ("load", "reference", "prepare", "panel", "write"):
            if f"{phase}_s" in info:
                report.add(SECTION, f"{label}: {phase} phase", info[f"{phase}_s"], "s")
    report.add(SECTION, "reference data on disk", info["reference_mb"], "MB", note="Parquet")
    pd.read_parquet(panel_file, columns=["sme_id"])  # the panel was written and reads back
    if peer_smes > 0:  # SCF_BENCH_FEATURES_PEER_SMES=0 skips the featuretools peer
        _peer(report, root, data, panel_file, min(peer_smes, smes))


if __name__ == "__main__":
    if sys.argv[1] == "--child":
        _child(*sys.argv[2:7])
    elif sys.argv[1] == "--subset":
        _ours_on_subset(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
