"""`LoopCommits`: the event loop's audit commits, in groups, each request answered after its own
group's commit (or with its error)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from serving.api.service import LoopCommits
from serving.exceptions import AuditUnavailable


class FakeCommit:
    """Stores each group's decisions as payloads; the first commit is slow, so that the requests
    that arrive meanwhile queue into the next group. `wait_for_turn`: seconds each commit waits
    for the database's write turn before it takes the queue (another process committing)."""

    def __init__(self, fail: bool = False, wait_for_turn: float = 0.0) -> None:
        self.groups: list[int] = []
        self.fail = fail
        self.wait_for_turn = wait_for_turn
        self.thread: str | None = None

    def __call__(
        self, take: Callable[[], Sequence[tuple[Sequence[Any], Any]]]
    ) -> list[list[dict[str, Any]]]:
        self.thread = threading.current_thread().name
        time.sleep(self.wait_for_turn)
        groups = take()
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


def test_requests_queued_while_a_commit_waits_for_its_write_turn_join_that_commit() -> None:
    """The queue is taken when the commit holds the write turn, not when it starts: requests
    that arrive while it waits (another worker process committing) share its transaction."""
    commit = FakeCommit(wait_for_turn=0.2)
    commits = LoopCommits(commit)

    async def run() -> list[list[dict[str, Any]]]:
        first = asyncio.ensure_future(commits.record(["a"], "k0"))
        await asyncio.sleep(0.05)  # its commit has started and waits for the turn
        rest = asyncio.gather(*(commits.record([f"d{i}"], f"k{i}") for i in range(1, 4)))
        return [await first, *await rest]

    try:
        answers = asyncio.run(run())
    finally:
        commits.close()
    assert commit.groups == [4]  # one transaction, one fsync, for all four
    assert answers == [
        [{"decision": d, "caller": f"k{i}"}] for i, d in enumerate(["a", "d1", "d2", "d3"])
    ]


def test_a_commit_that_fails_before_it_takes_the_queue_fails_the_queue() -> None:
    """A commit that fails before it holds the write turn (the store refused at once) answers
    the requests it was started for with the error; none is left waiting."""

    def refuse(take: Callable[[], Any]) -> list[list[dict[str, Any]]]:
        raise AuditUnavailable("audit store: no write turn within 30 s")

    commits = LoopCommits(refuse)

    async def run() -> list[BaseException | list[dict[str, Any]]]:
        return await asyncio.wait_for(
            asyncio.gather(*(commits.record([i], "k") for i in range(3)), return_exceptions=True),
            timeout=10,
        )

    try:
        answers = asyncio.run(run())
    finally:
        commits.close()
    assert len(answers) == 3 and all(isinstance(a, AuditUnavailable) for a in answers)


class Interrupted(BaseException):
    """Not an `Exception`: what a commit interrupted by the interpreter raises."""


def test_an_interrupted_commit_cancels_its_group_and_the_next_requests_are_committed() -> None:
    """A commit that raises a BaseException cancels its own requests; the commit thread lives
    on, so later requests are committed, not left waiting (review: raised, it ended the
    thread)."""
    calls: list[int] = []

    def commit(
        take: Callable[[], Sequence[tuple[Sequence[Any], Any]]],
    ) -> list[list[dict[str, Any]]]:
        groups = take()
        calls.append(len(groups))
        if len(calls) == 1:
            raise Interrupted()
        return [[{"decision": d} for d in ds] for ds, _ in groups]

    commits = LoopCommits(commit)

    async def run() -> tuple[BaseException | None, list[dict[str, Any]]]:
        first = asyncio.ensure_future(commits.record(["a"], "k"))
        cancelled: BaseException | None = None
        try:
            await first
        except asyncio.CancelledError as exc:
            cancelled = exc
        later = await asyncio.wait_for(commits.record(["b"], "k"), timeout=30)
        return cancelled, later

    try:
        cancelled, later = asyncio.run(run())
    finally:
        commits.close()
    assert isinstance(cancelled, asyncio.CancelledError)
    assert later == [{"decision": "b"}]
    assert calls == [1, 1]
