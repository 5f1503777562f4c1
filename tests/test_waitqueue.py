"""WaitQueue against a plain sorted list: any mix of joins (at the end, or jumping the queue) and leaves
(from the front or the middle) keeps the same entries in the same order, with the same answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfrouter.router.core.waitqueue import WaitQueue

# an operation: ("add", priority) joins with the next sequence number; ("remove", n) takes out the
# n-th queued entry (modulo the length), n == 0 being the front, the usual case
ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(-2, 0)),
        st.tuples(st.just("remove"), st.integers(0, 3)),
        st.tuples(st.just("remove"), st.integers(0, 200)),
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_same_as_a_sorted_list(operations: list[tuple[str, int]]) -> None:
    q = WaitQueue()
    model: list[tuple[tuple[int, int], str]] = []
    seq = 0
    for op, arg in operations:
        if op == "add":
            seq += 1
            entry = ((arg, seq), f"o{seq}")
            q.add(entry)
            model.append(entry)
            model.sort()
        elif model:
            entry = model.pop(arg % len(model))
            q.remove(entry)
            assert entry not in q
        assert list(q) == model
        assert len(q) == len(model) and bool(q) == bool(model)
        for i, e in enumerate(model):
            assert e in q and q.index(e) == i and q.bisect_left(e) == i


def test_a_long_queue_served_from_the_front_stays_short_in_memory() -> None:
    q = WaitQueue()
    for i in range(10_000):
        q.add(((0, i), f"o{i}"))
        if i >= 10:
            q.remove(((0, i - 10), f"o{i - 10}"))
    assert len(q) == 10
    assert len(q._entries) < 100  # the served prefix was cut off as it went
    assert [o for _k, o in q] == [f"o{i}" for i in range(9_990, 10_000)]


def test_missing_entries_are_named() -> None:
    q = WaitQueue()
    q.add(((0, 1), "o1"))
    with pytest.raises(ValueError, match="o2"):
        q.remove(((0, 2), "o2"))
    with pytest.raises(ValueError, match="o3"):
        q.index(((0, 3), "o3"))
    assert ((0, 2), "o2") not in q
