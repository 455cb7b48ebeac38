"""Temporary siblings of an output (`features.scratch`): a run killed outright (SIGKILL) leaves
its own; the next write to the same output removes it and says so; nothing else is touched."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from features import scratch
from features.scratch import host_mark, sibling, sweep
from tests.support.tables import random_tables

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftover(target: Path, pid: int, host: str, suffix: str) -> Path:
    path = target.parent / f".{target.name}.{pid}-{host}.abc123{suffix}"
    if suffix == ".tmp":
        path.write_bytes(b"x" * 100)
    else:
        path.mkdir()
        (path / "in-000000.invoices.arrow").write_bytes(b"x" * 100)
    return path


def test_a_run_killed_outright_leaves_its_folder_and_the_next_run_removes_it_and_says_so(
    tmp_path,
):
    """A real SIGKILL of a process holding a temporary folder beside the output, then the real
    command line writing the same output: exit 0, the folder gone, its path on stderr."""
    data = tmp_path / "data"
    data.mkdir()
    tables = random_tables(n_smes=8, n_cores=2, n_invoices=200, days=200, seed=3)
    for name, frame in tables.frames().items():
        frame.to_parquet(data / f"{name}.parquet", index=False)
    out = tmp_path / "out" / "panel.parquet"
    out.parent.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    code = (
        "import sys, time; from pathlib import Path; from features.scratch import sibling\n"
        "p = sibling(Path(sys.argv[1]), '.parts', folder=True)\n"
        "(p / 'in-000000.invoices.arrow').write_bytes(b'x' * 4096)\n"
        "print(p, flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        left = Path(holder.stdout.readline().strip())
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == -signal.SIGKILL
    assert left.is_dir() and left.parent == out.parent  # nothing could clean up

    cmd = [sys.executable, "-m", "features", "features", "--data", str(data), "--out", str(out)]
    run = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not left.exists()
    assert f"removed {left}: left by process {holder.pid}, which no longer runs" in run.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["panel.parquet"]


def test_only_dead_owners_on_this_host_of_this_output_lose_their_files(tmp_path, caplog):
    target = tmp_path / "scores.parquet"
    here, dead = host_mark(), _dead_pid()
    gone = [_leftover(target, dead, here, suffix) for suffix in scratch.SUFFIXES]
    kept = [
        _leftover(target, os.getppid(), here, ".parts"),  # its process still runs
        _leftover(target, os.getpid(), here, ".tmp"),  # this process's own
        _leftover(target, dead, "0badc0de" if here != "0badc0de" else "1badc0de", ".tmp"),
        _leftover(tmp_path / "other.parquet", dead, here, ".tmp"),  # another output's
        tmp_path / f".{target.name}.abc123.tmp",  # a name this scheme did not make
        tmp_path / f".{target.name}.{dead}-{here}.abc123.bak",  # not a temporary kind
    ]
    for path in kept[-2:]:
        path.write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="scf_risk.features"):
        removed = sweep(target)
    assert sorted(r.path for r in removed) == sorted(gone)
    assert {r.pid for r in removed} == {dead}
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in kept)
    assert len(caplog.records) == len(gone)
    assert all(str(p) in caplog.text for p in gone)


def test_a_leftover_that_cannot_be_removed_is_named_and_the_write_goes_on(
    tmp_path, caplog, monkeypatch
):
    target = tmp_path / "panel.parquet"
    stuck = _leftover(target, _dead_pid(), host_mark(), ".parts")

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(scratch.shutil, "rmtree", refuse)
    with caplog.at_level(logging.WARNING, logger="scf_risk.features"):
        made = sibling(target, ".tmp", folder=False)
    assert made.is_file() and made.name.startswith(f".{target.name}.{os.getpid()}-")
    assert stuck.exists()
    assert f"could not remove {stuck}" in caplog.text and "Permission denied" in caplog.text


def test_a_symbolic_link_named_like_a_leftover_is_unlinked_not_followed(tmp_path):
    target = tmp_path / "out" / "panel.parquet"
    target.parent.mkdir()
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    link = target.parent / f".{target.name}.{_dead_pid()}-{host_mark()}.abc123.parts"
    link.symlink_to(elsewhere, target_is_directory=True)
    assert [r.path for r in sweep(target)] == [link]
    assert not link.is_symlink() and (elsewhere / "keep.txt").read_text() == "keep"


def test_unknown_kind_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown temporary suffix"):
        sibling(tmp_path / "x.parquet", ".old", folder=False)
    assert list(tmp_path.iterdir()) == []


def test_the_owner_is_read_when_called_not_at_import(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch.os, "getpid", lambda: 424242)
    made = sibling(tmp_path / "p.parquet", ".partial", folder=True)
    assert made.is_dir() and made.name.startswith(f".p.parquet.424242-{host_mark()}.")
