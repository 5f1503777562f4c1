"""How long a session lasts, given who serves it: the simulator's one rule of match-dependent service.

Rules (docs/simulator.md, "Match-dependent service"):

- an arrival's ``service_s`` is the time the session takes with a fully proficient agent;
- an agent's proficiency for a group is its ``skills`` entry on ``agent_online`` (a number in (0, 1]);
  a group the agent's line does not list counts 1.0, so a trace without ``skills`` replays exactly as
  before;
- a session with proficiency ``p`` lasts ``service_s / p``;
- a returning customer served by the agent who served their last session (in this replay) needs
  ``same_agent_factor × service_s`` (the trace header's ``same_agent_factor``, default 1), on top of the
  proficiency: ``same_agent_factor × service_s / p``;
- customers without a group are served at full proficiency.

The length is fixed when the arrival's first session starts; a session moved by the engine (reassignment)
carries on with the rest of that length.
"""

from __future__ import annotations

from collections.abc import Iterable

from kfrouter.sim.trace import Header


def session_length(service_s: float, proficiency: float, same_agent: bool, same_agent_factor: float) -> float:
    """Seconds a session takes: ``service_s / proficiency``, times ``same_agent_factor`` when the agent is
    the one who served the customer last. ``proficiency`` in (0, 1]."""
    length = service_s if proficiency == 1.0 else service_s / proficiency
    return length * same_agent_factor if same_agent else length


class ServiceModel:
    """The skills of every agent seen so far and the trace's same-agent factor. ``active`` is False while
    every session lasts its ``service_s`` (no skill below 1 seen, factor 1): the replay then skips the call."""

    __slots__ = ("_skills", "active", "same_agent_factor")

    def __init__(self, same_agent_factor: float = 1.0) -> None:
        if not 0.0 < same_agent_factor < float("inf"):
            raise ValueError(f"same_agent_factor must be a finite number > 0, got {same_agent_factor!r}")
        self.same_agent_factor = float(same_agent_factor)
        self._skills: dict[str, dict[str, float]] = {}
        self.active = self.same_agent_factor != 1.0

    @classmethod
    def from_header(cls, header: Header) -> ServiceModel:
        """The model of a trace (the reader has checked ``same_agent_factor``)."""
        return cls(float(header.meta.get("same_agent_factor", 1.0)))

    def agent_online(self, agent: str, skills: Iterable[tuple[str, float]]) -> None:
        """``agent`` came online (again) with these skills; they replace the ones it had."""
        table = dict(skills)
        self._skills[agent] = table
        if any(p != 1.0 for p in table.values()):
            self.active = True

    def proficiency(self, agent: str, group: str | None) -> float:
        if group is None:
            return 1.0
        table = self._skills.get(agent)
        return 1.0 if table is None else table.get(group, 1.0)

    def length(self, service_s: float, group: str | None, agent: str, last_agent: str | None) -> float:
        """Seconds the session of an arrival (``service_s``, ``group``) with ``agent`` lasts; ``last_agent``
        served the customer's previous session in this replay (None: nobody)."""
        return session_length(
            service_s, self.proficiency(agent, group), agent == last_agent, self.same_agent_factor
        )
