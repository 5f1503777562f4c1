"""One group's waiting customers in queue order, built for how a queue is really used.

Entries are ``(key, openid)`` tuples, unique, kept sorted; ``key`` is (-priority or 0, arrival sequence).
Almost every customer joins at the end (a new arrival gets the highest sequence number) and leaves from the
front (served first), so the entries live in a plain list with a moving head: joining at the end is an
append, leaving from the front moves the head by one, and the dead prefix is cut off once it is at least
half of the list. A customer who jumps the queue (a higher priority, or one put back in their old place)
or leaves from the middle costs one bisect and one list insertion or deletion, a memory move of the
entries behind them — cheap next to a balanced tree's bookkeeping at the queue lengths a service sees.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterator
from itertools import islice

Entry = tuple[tuple[int, int], str]


def queue_key(priority: int, seq: int, priorities: bool) -> tuple[int, int]:
    """The queue order of a customer: higher ``priority`` first, then arrival (``seq``); with
    ``priorities`` off (``[engine] priorities = false``) arrival alone."""
    return (-priority if priorities else 0, seq)


_COMPACT_AT = 32  # cut the dead prefix once it is this long and at least half of the list


class WaitQueue:
    __slots__ = ("_entries", "_head")

    def __init__(self) -> None:
        self._entries: list[Entry] = []
        self._head = 0  # entries before this index have left

    def __len__(self) -> int:
        return len(self._entries) - self._head

    def __bool__(self) -> bool:
        return len(self._entries) > self._head

    def __iter__(self) -> Iterator[Entry]:
        """Entries in queue order. Lazy: do not change the queue while iterating."""
        if self._head:
            return islice(self._entries, self._head, None)
        return iter(self._entries)

    def __contains__(self, entry: object) -> bool:
        entries = self._entries
        i = bisect_left(entries, entry, self._head)  # type: ignore[call-overload]
        return i < len(entries) and bool(entries[i] == entry)

    def add(self, entry: Entry) -> None:
        entries = self._entries
        if len(entries) == self._head or entry > entries[-1]:
            entries.append(entry)
        else:
            insort(entries, entry, self._head)

    def remove(self, entry: Entry) -> None:
        """Remove ``entry``; ValueError when it is not queued."""
        entries = self._entries
        head = self._head
        if head < len(entries) and entries[head] == entry:  # served first: the usual case
            head += 1
            if head == len(entries):
                entries.clear()
                head = 0
            elif head >= _COMPACT_AT and 2 * head >= len(entries):
                del entries[:head]
                head = 0
            self._head = head
            return
        i = bisect_left(entries, entry, head)
        if i == len(entries) or entries[i] != entry:
            raise ValueError(f"{entry!r} is not queued")
        del entries[i]

    def index(self, entry: Entry) -> int:
        """0-based place of ``entry``; ValueError when it is not queued."""
        i = bisect_left(self._entries, entry, self._head)
        if i == len(self._entries) or self._entries[i] != entry:
            raise ValueError(f"{entry!r} is not queued")
        return i - self._head

    def bisect_left(self, entry: Entry) -> int:
        """How many queued entries sort before ``entry`` (queued or not)."""
        return bisect_left(self._entries, entry, self._head) - self._head
