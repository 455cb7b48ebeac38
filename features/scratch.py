"""Temporary files and folders written beside an output, and those a killed run left behind.

Every writer of an output (a panel, a scores file, a folder of tables or reports) writes into a
temporary sibling and renames it at the end, so a failed run leaves nothing half-written; it
removes the sibling on any error and on SIGTERM (`features.cli.terminated_as_exit`). A run killed
outright (SIGKILL, the OOM killer, a power cut) cannot: its sibling stays (several GB for the Dask
engine's partitions at 100,000 SMEs).

So each sibling's name carries its owner: ``.<output name>.<pid>-<host>.<random><suffix>``, where
host is a digest of the host name and, on Linux, the process's PID namespace (two containers that
share a volume and a host name never see each other's processes as dead). Before writing, `sibling`
removes the siblings of the same output whose owner is on this host and no longer runs, and logs
a warning naming each (`scf_risk.features`; shown on stderr by the command line). A sibling whose
process still runs (or whose PID was reused) is kept, as are names this scheme did not make.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("scf_risk.features")

SUFFIXES = (".tmp", ".parts", ".partial")
"""The kinds of sibling: a file renamed over the output, a folder of partitions' intermediate
files, a folder renamed to the output."""


@dataclass(frozen=True)
class Leftover:
    """A temporary sibling removed because the process that made it no longer runs."""

    path: Path
    pid: int


def host_mark() -> str:
    """Eight hex digits naming this host and PID namespace (read at call time, not import)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: the host name alone
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}\0{namespace}".encode()).hexdigest()[:8]


def _prefix(target: Path, pid: int, host: str) -> str:
    return f".{target.name}.{pid}-{host}."


def sibling(target: Path, suffix: str, *, folder: bool) -> Path:
    """A new temporary file (or folder) beside `target`, named with this process as its owner,
    after removing the leftovers of dead owners of the same target (`sweep`)."""
    if suffix not in SUFFIXES:
        raise ValueError(f"unknown temporary suffix {suffix!r}; expected one of {SUFFIXES}")
    sweep(target)
    prefix = _prefix(target, os.getpid(), host_mark())
    if folder:
        return Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    return Path(name)


def sweep(target: Path) -> list[Leftover]:
    """Remove the temporary siblings of `target` made on this host by processes that no longer
    run; log a warning for each and return them."""
    host = host_mark()
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.(\d+)-{host}\..+({'|'.join(map(re.escape, SUFFIXES))})"
    )
    removed: list[Leftover] = []
    try:
        entries = list(target.parent.iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:
        match = pattern.fullmatch(path.name)
        if match is None or _running(int(match.group(1))):
            continue
        pid = int(match.group(1))
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove %s, left by process %d: %s", path, pid, exc)
            continue
        log.warning("removed %s: left by process %d, which no longer runs", path, pid)
        removed.append(Leftover(path, pid))
    return removed


def _running(pid: int) -> bool:
    """Whether a process with this PID exists (ours, another user's, or a reuse of the PID)."""
    if pid <= 0:
        return True  # never a real owner: keep the file rather than guess
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
