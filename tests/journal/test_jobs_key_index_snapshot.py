"""The idempotency index in a snapshot: each entry's text is encoded once and reused, and is always the
entry's own (a key used again after its retention carries its new reply; a forgotten key is gone).

Every snapshot writes every retained key, so the text is kept per entry (``KeyEntry.snapshot_text``)
instead of encoding the whole index again each time; these checks hold that shortcut to the plain
encoding of ``dump()``.
"""

from __future__ import annotations

import json
from typing import Any

from vms_adapter.server.model import Record
from vms_adapter.server.state import JournalState

KEYS = ["k-plain", 'k-"quoted"\\', "k-ünïcödé-✓", "k-\U0001f600", "k-\n"]


def commit(state: JournalState, key: str, at: float, reply: dict[str, Any]) -> None:
    seq = state.last_seq + 1
    record = Record(seq, f"j-{seq:08d}", "x-a", {}, at)
    state.apply([record], {"time": at, "key": key, "reply": reply, "newJob": record.job_id})


def plain(state: JournalState) -> Any:
    return json.loads(json.dumps(state.dump()))


def test_the_kept_text_of_the_index_is_the_index_through_reuse_and_forgetting() -> None:
    state = JournalState()
    for i, key in enumerate(KEYS):
        commit(state, key, 100.0 + i, {"seq": i + 1, "directives": [{"id": f"d{i}", "note": key}]})
    for chunk in (1, 2, 500):
        assert json.loads(state.dump_json(chunk)) == plain(state)
    first = state.dump_json()
    assert state.dump_json() == first  # from the kept text: the same bytes

    # The first key is forgotten, the second used again after its retention: a new entry, a new reply.
    assert state.forget_keys_before(100.5) == 1
    commit(state, KEYS[1], 200.0, {"seq": 99, "directives": []})
    again = json.loads(state.dump_json(2))
    assert again == plain(state)
    assert KEYS[0] not in again["keys"]
    assert again["keys"][KEYS[1]] == [200.0, {"seq": 99, "directives": []}]
    assert list(again["keys"])[-1] == KEYS[1]  # re-inserted at the end, as in the live index


def test_a_copy_for_the_background_snapshot_shares_the_kept_text() -> None:
    state = JournalState()
    for i, key in enumerate(KEYS):
        commit(state, key, 100.0 + i, {"seq": i + 1})
    copy = state.copy()
    encoded = copy.dump_json()
    commit(state, "k-after", 300.0, {"seq": 6})  # the live state moves on while the copy is written
    assert json.loads(encoded) == plain(copy)
    assert json.loads(state.dump_json()) == plain(state)
    assert state.keys[KEYS[0]].snapshot_text(KEYS[0]) == copy.keys[KEYS[0]].snapshot_text(KEYS[0])
