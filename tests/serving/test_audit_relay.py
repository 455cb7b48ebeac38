"""Records prepared before the write turn (`Prepared`) and the commit relay between the worker
processes of a host (`serving.audit.relay`): the same stored bytes, the same chain, nothing
acknowledged before its commit, nothing stored twice."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.audit import relay
from serving.audit.canonical import canonical_bytes, canonical_json, record_hash
from serving.audit.signing import PublicKeys, Signer
from serving.audit.store import CHAIN_KEYS, AuditStore, Prepared
from serving.exceptions import AuditUnavailable
from tests.support.audit import body

needs_relay = pytest.mark.skipif(not relay.supported(), reason="abstract Unix sockets: Linux only")

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
# Keys around and between the chain's fields (prefixes, the same first letters, non-ASCII).
keys = st.text(max_size=12) | st.sampled_from(
    ["", "a", "created", "created_at_", "d", "decision", "pd", "prev", "prev_hash0", "reasons",
     "record", "record_hash_", "score", "seq", "sequence0", "sme_id", "z", "é", "\U0001f600"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(keys, values, max_size=10),
    st.integers(1, 2**62),
    st.text(max_size=40),
    st.text(max_size=40),
    st.text(max_size=64),
)
def test_a_prepared_body_chains_to_the_canonical_form_of_its_payload(
    extra: dict[str, Any], sequence: int, decision_id: str, created_at: str, prev: str
) -> None:
    doc = {k: v for k, v in extra.items() if k not in CHAIN_KEYS}
    doc.update(sme_id="S1", as_of="2024-01-31", grade="G03", score=1.5, pd=0.25)
    digest, text = Prepared.of(doc).chained(decision_id, sequence, created_at, prev)
    payload = {**doc, "decision_id": decision_id, "sequence": sequence}
    payload.update(created_at=created_at, prev_hash=prev)
    assert digest == record_hash(payload)
    assert text == canonical_json({**payload, "record_hash": digest})
    assert text.encode() == canonical_bytes({**payload, "record_hash": digest})


@pytest.mark.parametrize("key", CHAIN_KEYS)
def test_a_body_holding_a_chain_field_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match=key):
        Prepared.of({**body(1), key: "x"})


def test_items_travel_whole_and_a_malformed_request_is_refused() -> None:
    items = [Prepared.of(body(1)), Prepared.of({**body(2), "note": "é\u2028"})]
    frame = relay.pack_items(items)
    back = relay.unpack_items(frame[4:])
    assert [(b.parts, b.columns, b.body) for b in back] == [
        (i.parts, i.columns, None) for i in items
    ]
    with pytest.raises(ValueError, match="ends inside"):
        relay.unpack_items(frame[4:-3])
    with pytest.raises(ValueError, match="after its items"):
        relay.unpack_items(frame[4:] + b"\0")


@pytest.fixture
def pair(tmp_path: Path) -> Any:
    """Two stores of one SQLite file in this process, as two workers would be: the first to
    join the relay leads, the second sends it its records."""
    signer = Signer.generate()
    url = f"sqlite:///{tmp_path}/audit.db"
    leader, sender = AuditStore(url, signer=signer), AuditStore(url, signer=signer)
    assert leader.start_relay() and sender.start_relay()  # the first to start leads
    leader.append([body(0)])
    yield leader, sender, PublicKeys.of(signer)
    sender.dispose()
    leader.dispose()


@needs_relay
def test_a_senders_records_are_committed_by_the_leader_and_chained_with_its_own(
    pair: Any,
) -> None:
    leader, sender, keys = pair
    leader.append_gathered(lambda: [body(1)])
    assert leader._relay is not None and leader._relay.leading
    stored = sender.append_gathered(lambda: [body(2), body(3, sme="S2")])
    assert sender._relay is not None and not sender._relay.leading
    assert [p["sequence"] for p in stored] == [3, 4]
    for p in stored:
        assert sender.get(p["decision_id"]) == {k: v for k, v in p.items() if k != "receipt"}
        assert sender.check_receipt(p["receipt"], keys) == []
    assert [p["sme_id"] for p in stored] == ["S1", "S2"]
    report = leader.verify(public_keys=keys)
    assert report.ok and report.records == 4, str(report)


@needs_relay
def test_the_leaders_loop_commits_a_senders_records_when_it_will(pair: Any) -> None:
    """With a `commit_waker` (the service's loop commits), the leader's connection thread
    queues a sender's records and waits for that commit instead of committing them itself."""
    leader, sender, _ = pair
    groups: list[int] = []
    real = leader._commit_group

    def counted(gather: Any) -> None:
        def counting() -> Any:
            group = gather()
            groups.append(sum(len(e.items) for e in group))
            return group

        real(counting)

    leader._commit_group = counted
    mine: list[dict[str, Any]] = []

    def loop_commit() -> None:
        time.sleep(0.05)  # the sender's records are queued by then
        mine.extend(leader.append_gathered(lambda: [body(9)]))

    def waker() -> bool:
        threading.Thread(target=loop_commit).start()
        return True

    leader.commit_waker = waker
    (stored,) = sender.append_gathered(lambda: [body(4)])
    assert groups == [2]  # the loop's own record and the sender's: one transaction
    assert [mine[0]["sequence"], stored["sequence"]] == [2, 3]
    assert leader.count() == 3 and leader.verify().ok


@needs_relay
def test_a_sender_whose_leader_went_away_commits_by_itself_then_leads(pair: Any) -> None:
    leader, sender, _ = pair
    sender.append_gathered(lambda: [body(1)])
    assert leader._relay is not None
    leader._relay.close()  # the leading worker stopped
    (stored,) = sender.append_gathered(lambda: [body(2)])
    assert stored["sequence"] == 3
    (stored,) = sender.append_gathered(lambda: [body(3)])
    assert sender._relay is not None and sender._relay.leading
    assert stored["sequence"] == 4 and sender.verify().ok


@needs_relay
def test_an_error_of_the_leaders_commit_is_the_senders_and_nothing_is_stored(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    leader, sender, _ = pair

    def broken(items: Any, **_: Any) -> Any:
        raise AuditUnavailable("audit store is not writable: disk full")

    monkeypatch.setattr(leader, "append_prepared", broken)
    with pytest.raises(AuditUnavailable, match="disk full"):
        sender.append_gathered(lambda: [body(1)])
    assert leader.count() == 1 and leader.verify().ok


@needs_relay
@pytest.mark.parametrize("committed", [True, False])
def test_a_lost_answer_is_looked_up_never_a_second_copy(
    pair: Any, monkeypatch: pytest.MonkeyPatch, committed: bool
) -> None:
    """Once the records were sent whole, a leader that goes away without answering (killed
    before or after its commit) leaves their fate to the database: the sender looks them up
    by decision id under the write lock and answers them as stored, or commits them itself."""
    leader, sender, keys = pair
    real = leader.append_prepared

    def vanish(items: Any, **kw: Any) -> Any:
        if committed:
            real(items, **kw)
        assert leader._relay is not None
        leader._relay.close()
        raise ConnectionResetError("the leading worker was killed")

    monkeypatch.setattr(leader, "append_prepared", vanish)
    (stored,) = sender.append_gathered(lambda: [body(1)])
    monkeypatch.undo()
    assert stored["sequence"] == 2 and leader.count() == 2  # stored once
    assert sender.get(stored["decision_id"]) == {k: v for k, v in stored.items() if k != "receipt"}
    assert sender.check_receipt(stored["receipt"], keys) == []
    (stored,) = sender.append_gathered(lambda: [body(2)])
    assert stored["sequence"] == 3 and sender.verify().ok


@needs_relay
def test_a_malformed_request_closes_the_connection_and_stores_nothing(pair: Any) -> None:
    leader, sender, _ = pair
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(10)
        peer.connect(relay.address(leader.chain_name, leader.relay_identity()))
        peer.sendall(b"\0\0\0\x05" + b"\0\0\0\x09x")  # claims 9 items, holds none
        assert peer.recv(100) == b""  # closed without an answer
    assert leader.count() == 1
    (stored,) = sender.append_gathered(lambda: [body(2)])
    assert stored["sequence"] == 2 and leader.verify().ok


def test_no_relay_for_a_database_in_memory() -> None:
    store = AuditStore("sqlite://")
    assert not store.start_relay()
    store.dispose()
