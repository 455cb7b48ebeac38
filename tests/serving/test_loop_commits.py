"""`LoopCommits`: the event loop's audit commits, in groups, each request answered after its own
group's commit (or with its error)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from serving.api.service import LoopCommits
from serving.exceptions import AuditUnavailable


class FakeCommit:
    """Stores each group's decisions as payloads; the first commit is slow, so that the requests
    that arrive meanwhile queue into the next group."""

    def __init__(self, fail: bool = False) -> None:
        self.groups: list[int] = []
        self.fail = fail
        self.thread: str | None = None

    def __call__(self, groups: Sequence[tuple[Sequence[Any], Any]]) -> list[list[dict[str, Any]]]:
        self.thread = threading.current_thread().name
        self.groups.append(len(groups))
        if len(self.groups) == 1:
            time.sleep(0.2)
        if self.fail:
            raise AuditUnavailable("audit store is not writable: disk full")
        return [[{"decision": d, "caller": caller} for d in ds] for ds, caller in groups]


def test_requests_queued_during_a_commit_are_the_next_group_and_get_their_own_payloads() -> None:
    commit = FakeCommit()
    commits = LoopCommits(commit)

    async def run() -> list[list[dict[str, Any]]]:
        first = asyncio.ensure_future(commits.record(["a"], "k0"))
        await asyncio.sleep(0.05)  # the first commit is under way
        rest = [commits.record([f"d{i}", f"e{i}"], f"k{i}") for i in range(1, 5)]
        return [await first, *await asyncio.gather(*rest)]

    try:
        answers = asyncio.run(run())
    finally:
        commits.close()
    assert commit.groups == [1, 4]  # one transaction for the four that waited
    assert answers[0] == [{"decision": "a", "caller": "k0"}]
    for i, payloads in enumerate(answers[1:], start=1):
        assert payloads == [
            {"decision": f"d{i}", "caller": f"k{i}"},
            {"decision": f"e{i}", "caller": f"k{i}"},
        ]
    assert commit.thread is not None and commit.thread.startswith("scf-risk-audit")


def test_a_failed_commit_is_every_request_of_its_group_s_error() -> None:
    commits = LoopCommits(FakeCommit(fail=True))

    async def run() -> list[BaseException | list[dict[str, Any]]]:
        return await asyncio.gather(
            *(commits.record([i], "k") for i in range(3)), return_exceptions=True
        )

    try:
        answers = asyncio.run(run())
    finally:
        commits.close()
    assert len(answers) == 3
    assert all(isinstance(a, AuditUnavailable) for a in answers)


def test_a_request_that_left_does_not_stop_the_others() -> None:
    commit = FakeCommit()
    commits = LoopCommits(commit)

    async def run() -> list[dict[str, Any]]:
        first = asyncio.ensure_future(commits.record(["a"], "k"))
        await asyncio.sleep(0.05)
        left = asyncio.ensure_future(commits.record(["gone"], "k"))
        stays = asyncio.ensure_future(commits.record(["b"], "k"))
        await asyncio.sleep(0)
        left.cancel()  # its client disconnected: its decision is still committed
        with pytest.raises(asyncio.CancelledError):
            await left
        await first
        return await stays

    try:
        assert asyncio.run(run()) == [{"decision": "b", "caller": "k"}]
    finally:
        commits.close()
    assert commit.groups == [1, 2]
