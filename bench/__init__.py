"""`make bench`: each bench_*.py module in this folder exposes `run(report: Report) -> None`."""
