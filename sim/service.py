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

Re-contact (the trace header's ``recontact``: ``{"rate": R, "gap_mean_s": G}``; absent: every session
resolves, as before):

- a session that serves an arrival to its end with proficiency ``p`` leaves the customer's issue
  unresolved with probability ``min(1, R / p)`` — R with a fully proficient agent, more often with a
  weaker one;
- an unresolved customer comes back ``Exp(G)`` seconds later as a new arrival (same group, priority,
  ``service_s``, ``patience_s`` and tags); a re-contact may itself not resolve, at most
  ``MAX_RECONTACTS`` times after one arrival of the trace;
- both draws come from a hash of (run seed, customer, time of the trace arrival, attempt): deterministic
  per seed, and the same for every policy (a policy changes the outcome only through ``p``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

from attrs import frozen

from kfrouter.sim.trace import Header, recontact_of

MAX_RECONTACTS = 3  # re-contacts after one arrival of the trace, at most
_SCALE = 2.0**-64


def session_length(service_s: float, proficiency: float, same_agent: bool, same_agent_factor: float) -> float:
    """Seconds a session takes: ``service_s / proficiency``, times ``same_agent_factor`` when the agent is
    the one who served the customer last. ``proficiency`` in (0, 1]."""
    length = service_s if proficiency == 1.0 else service_s / proficiency
    return length * same_agent_factor if same_agent else length


@frozen
class Recontact:
    """The re-contact model of a trace: ``rate`` R in [0, 1], ``gap_mean_s`` G > 0 (module docstring)."""

    rate: float
    gap_mean_s: float

    @classmethod
    def from_meta(cls, raw: object) -> Recontact | None:
        """The header's ``recontact`` object (None: absent). ValueError names the key."""
        checked = recontact_of(raw)
        return None if checked is None else cls(*checked)

    def comes_back(
        self, seed: int, customer: str, first_t: float, attempt: int, proficiency: float
    ) -> float | None:
        """Seconds until a customer whose session (of the arrival chain started by the trace arrival at
        ``first_t``; ``attempt`` re-contacts so far) ended with ``proficiency`` comes back, or None when
        the session resolved."""
        if attempt >= MAX_RECONTACTS or self.rate == 0.0:
            return None
        digest = hashlib.blake2b(f"{seed}|{customer}|{first_t!r}|{attempt}".encode(), digest_size=16).digest()
        u = int.from_bytes(digest[:8], "big") * _SCALE
        if u >= min(1.0, self.rate / proficiency):
            return None
        v = int.from_bytes(digest[8:], "big") * _SCALE
        return -self.gap_mean_s * math.log1p(-v)


class ServiceModel:
    """The skills of every agent seen so far and the trace's same-agent factor. ``active`` is False while
    every session lasts its ``service_s`` (no skill below 1 seen, factor 1): the replay then skips the call."""

    __slots__ = ("_skills", "active", "recontact", "same_agent_factor")

    def __init__(self, same_agent_factor: float = 1.0, recontact: Recontact | None = None) -> None:
        if not 0.0 < same_agent_factor < float("inf"):
            raise ValueError(f"same_agent_factor must be a finite number > 0, got {same_agent_factor!r}")
        self.same_agent_factor = float(same_agent_factor)
        self._skills: dict[str, dict[str, float]] = {}
        self.active = self.same_agent_factor != 1.0
        self.recontact = recontact  # None: every session resolves

    @classmethod
    def from_header(cls, header: Header) -> ServiceModel:
        """The model of a trace (the reader has checked ``same_agent_factor`` and ``recontact``)."""
        return cls(
            float(header.meta.get("same_agent_factor", 1.0)),
            Recontact.from_meta(header.meta.get("recontact")),
        )

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
