"""Run the benchmarks: `python -m bench [NAME ...]` (NAME = a bench_NAME.py module; default all)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

from bench.report import Report


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    modules = pkgutil.iter_modules([str(here)])
    names = sorted(m.name.removeprefix("bench_") for m in modules if m.name.startswith("bench_"))
    chosen = argv or names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"unknown benchmark(s): {unknown}; known: {names}", file=sys.stderr)
        return 2
    report = Report(out_dir=Path("bench-out"))
    for name in chosen:
        print(f"== bench {name}", flush=True)
        importlib.import_module(f"bench.bench_{name}").run(report)
        report.write()
    print(f"report: {report.out_dir / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
