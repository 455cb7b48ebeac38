"""The benchmark report: figures (medians of several runs, peers' ratios) -> Markdown + JSON."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    section: str
    name: str
    value: float
    unit: str
    runs: list[float] = field(default_factory=list)
    target: str = ""
    note: str = ""


@dataclass
class Report:
    out_dir: Path
    figures: list[Figure] = field(default_factory=list)

    def add(
        self,
        section: str,
        name: str,
        value: float,
        unit: str,
        *,
        runs: list[float] | None = None,
        target: str = "",
        note: str = "",
    ) -> None:
        fig = Figure(section, name, float(value), unit, list(runs or []), target, note)
        self.figures.append(fig)
        extra = f"  (runs: {', '.join(f'{r:.4g}' for r in fig.runs)})" if fig.runs else ""
        goal = f"  target {target}" if target else ""
        print(f"[{section}] {name}: {fig.value:.4g} {unit}{extra}{goal}", flush=True)

    def write(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "report.json").write_text(
            json.dumps([asdict(f) for f in self.figures], indent=2), encoding="utf-8"
        )
        lines = ["# scf-risk benchmark report", ""]
        for section in dict.fromkeys(f.section for f in self.figures):
            lines += [
                f"## {section}",
                "",
                "| figure | value | unit | runs | target | note |",
                "|---|---|---|---|---|---|",
            ]
            for f in (f for f in self.figures if f.section == section):
                runs = ", ".join(f"{r:.4g}" for r in f.runs)
                lines.append(
                    f"| {f.name} | {f.value:.4g} | {f.unit} | {runs} | {f.target} | {f.note} |"
                )
            lines.append("")
        (self.out_dir / "report.md").write_text("\n".join(lines), encoding="utf-8")


def median_runs(fn: Callable[[], Any], runs: int = 3) -> tuple[float, list[float], Any]:
    """Run `fn` several times: the median wall time (s), every run's time, the last result."""
    times: list[float] = []
    result: Any = None
    for _ in range(runs):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def timed_runs(fn: Callable[[], Any], runs: int = 3) -> tuple[list[float], list[float], Any]:
    """Run `fn` several times: every run's wall time (s), every run's CPU time (s, all threads
    of this process), the last result. CPU time is the figure to trust on a shared machine."""
    walls: list[float] = []
    cpus: list[float] = []
    result: Any = None
    for _ in range(runs):
        c0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return walls, cpus, result
