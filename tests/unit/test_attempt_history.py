"""A pod killed before it could record itself (OOMKilled by its cgroup, evicted) leaves no
ledger record; its successor records it from the operator's history, so the ledger and the
manifest hold every attempt."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gisjob_worker.attempt import AttemptRequest, unrecorded_history
from gisjob_worker.ledger import LedgerRecord
from gisjob_worker.ledgerstore import LocalLedgerStore

DIGEST = "0123456789abcdef"


def _history(*entries: dict[str, object]) -> str:
    return json.dumps(list(entries), separators=(",", ":"))


def test_killed_attempts_without_a_record_are_recorded_once(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    # attempt 1 recorded itself (a worker exit 3); attempt 0 was OOM-killed, 2 evicted
    store.put(
        LedgerRecord(job="j", digest=DIGEST, tile="f000001", attempt=1, outcome="memory",
                     writer="worker", exit_code=3, recorded_at=time.time())
    )  # fmt: skip
    history = _history(
        {"n": 0, "m": 100 << 20, "c": 1.0, "s": "initial", "x": 137, "o": True},
        {"n": 1, "m": 100 << 20, "c": 0.5, "s": "shrinkChunks", "x": 3, "o": False},
        {"n": 2, "m": 150 << 20, "c": 0.5, "s": "grow", "x": None, "o": False, "d": True},
    )
    req = AttemptRequest(tile="f000001", attempt=3, strategy="disrupted", history=history)
    earlier = unrecorded_history("j", store, req, DIGEST)
    assert [(r.attempt, r.outcome, r.writer) for r in earlier] == [
        (0, "memory", "runner"),
        (2, "disruption", "runner"),
    ]
    assert earlier[0].oom_killed and earlier[0].exit_code == 137
    assert earlier[1].disrupted and earlier[1].memory == 150 << 20
    assert "OOMKilled" in (earlier[0].error or "")
    for r in earlier:
        store.put(r)
    assert unrecorded_history("j", store, req, DIGEST) == []  # recorded once


def test_no_or_garbled_history_records_nothing(tmp_path: Path) -> None:
    store = LocalLedgerStore(tmp_path)
    for history in (None, "", "not json", "{}", _history({"n": "x"})):
        req = AttemptRequest(tile="f000001", attempt=1, history=history)
        assert unrecorded_history("j", store, req, DIGEST) == []
