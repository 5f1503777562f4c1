"""What a replay keeps of its customers once they are done: streaming statistics, not one record each.

``Tally`` (always on) takes one call per served arrival and one per abandonment, and keeps the waits of
served customers in an ``array('d')`` (8 bytes each: a million customers take 8 MB) plus a few counters, so
the report's percentiles are exact (nearest rank over every wait) and nothing else grows with the number
of customers. ``ArrivalLog`` (opt-in, ``RunConfig.arrivals``) keeps one entry per arrival in trace order,
for tests and for analyses that need every customer (batch means in the validation tests); it costs tens of
bytes per arrival and is off by default.

Rules: the runner decides each arrival's facts (its wait, whether its agent was of its group, whether it
came back to its last agent, whether it got the agent it named) once, when the arrival is settled; the tally
only counts them. ``None`` means "does not apply" (no group, not returning, named nobody).
"""

from __future__ import annotations

from array import array

# outcome per arrival (ArrivalLog.outcome)
UNSERVED, SERVED, ABANDONED = 0, 1, 2


class Share:
    """Hits among the cases a rate applies to: ``rate()`` is hits / cases, None without cases."""

    __slots__ = ("cases", "hits")

    def __init__(self) -> None:
        self.cases = 0
        self.hits = 0

    def add(self, hit: bool | None) -> None:
        if hit is not None:
            self.cases += 1
            self.hits += hit

    def rate(self) -> float | None:
        return self.hits / self.cases if self.cases else None


class Tally:
    """Streaming statistics of one run: the waits of served customers (``waits``, in the order they were
    served), the number who abandoned, and three shares among served customers: ``affinity`` (an agent of
    their group; customers with a group), ``sticky`` (the agent who served them last; returning customers),
    ``preference`` (the agent they named; customers naming one)."""

    __slots__ = ("abandoned", "affinity", "preference", "sticky", "waits")

    def __init__(self) -> None:
        self.waits = array("d")
        self.abandoned = 0
        self.affinity = Share()
        self.sticky = Share()
        self.preference = Share()

    @property
    def served(self) -> int:
        return len(self.waits)

    def add_served(
        self, wait: float, own_group: bool | None, sticky: bool | None, preferred: bool | None
    ) -> None:
        """An arrival got its first session after waiting ``wait`` seconds."""
        self.waits.append(wait)
        if own_group is not None:
            self.affinity.add(own_group)
        if sticky is not None:
            self.sticky.add(sticky)
        if preferred is not None:
            self.preference.add(preferred)

    def add_abandoned(self) -> None:
        self.abandoned += 1


class ArrivalLog:
    """One entry per arrival, index = order of arrival in the trace (absorbed arrivals excluded):
    ``arrival_t``, ``group``, ``outcome`` (UNSERVED until settled), ``wait`` (served: until the first
    session; abandoned: until leaving; nan while unsettled), ``agent`` (first agent), and ``own_group``,
    ``sticky``, ``preferred`` (None: does not apply; False until served by the right agent)."""

    def __init__(self) -> None:
        self.arrival_t: list[float] = []
        self.group: list[str | None] = []
        self.outcome = bytearray()
        self.wait: list[float] = []
        self.agent: list[str | None] = []
        self.own_group: list[bool | None] = []
        self.sticky: list[bool | None] = []
        self.preferred: list[bool | None] = []

    def __len__(self) -> int:
        return len(self.arrival_t)

    def arrived(self, idx: int, t: float, group: str | None, returning: bool, preferred: str | None) -> None:
        if idx != len(self.arrival_t):
            raise ValueError(f"ArrivalLog: arrival {idx} out of order (expected {len(self.arrival_t)})")
        self.arrival_t.append(t)
        self.group.append(group)
        self.outcome.append(UNSERVED)
        self.wait.append(float("nan"))
        self.agent.append(None)
        self.own_group.append(None)
        self.sticky.append(False if returning else None)
        self.preferred.append(None if preferred is None else False)

    def served(
        self,
        idx: int,
        wait: float,
        agent: str,
        own_group: bool | None,
        sticky: bool | None,
        preferred: bool | None,
    ) -> None:
        self.outcome[idx] = SERVED
        self.wait[idx] = wait
        self.agent[idx] = agent
        self.own_group[idx] = own_group
        self.sticky[idx] = sticky
        self.preferred[idx] = preferred

    def abandoned(self, idx: int, wait: float) -> None:
        self.outcome[idx] = ABANDONED
        self.wait[idx] = wait
