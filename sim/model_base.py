"""What the two fake models keep alike (``sim.wechat_model``: one Official Account; ``sim.wecom_model``: one
WeCom corp): the count of calls per endpoint, an injected fault rule per endpoint drawn with the model's
own Random, and the outbox of what the platform would deliver to the developer's URL.

Rules: pure, like the models (no I/O, no clock; the only randomness is the model's ``rng``). A subclass
names its endpoint table (``ENDPOINTS``: a fault is installed under the canonical path, given as that path
or a unique suffix), defines ``_reset_state`` and calls ``_reset_gate()`` from it.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from typing import Any, ClassVar, Generic, TypeVar

from kfrouter.sim.fake_options import Fault, resolve_endpoint

Json = dict[str, Any]
P = TypeVar("P")  # what the outbox holds: the model's kind of push


class ModelBase(Generic[P]):
    """Calls, faults and the outbox of a fake model (see the module docstring)."""

    ENDPOINTS: ClassVar[Mapping[str, object]]
    rng: random.Random
    calls: Counter[str]
    faults: dict[str, Fault]
    outbox: list[P]

    def _reset_gate(self) -> None:
        self.calls = Counter()
        self.faults = {}
        self.outbox = []

    def _reset_state(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget all state (what there is, tokens, counters, faults); keep the options and credentials."""
        self._reset_state()

    def drain_outbox(self) -> list[P]:
        out, self.outbox = self.outbox, []
        return out

    def set_fault(self, endpoint: str, fault: Fault | None) -> str:
        """Install (or with None remove) the fault rule of ``endpoint`` (a canonical name or suffix);
        returns the canonical name."""
        ep = resolve_endpoint(endpoint, self.ENDPOINTS)
        if fault is None:
            self.faults.pop(ep, None)
        else:
            self.faults[ep] = fault
        return ep

    def set_faults(self, rules: Mapping[str, Fault | None]) -> dict[str, bool]:
        """``set_fault`` for each endpoint, all or nothing (every endpoint is resolved first); returns the
        canonical endpoints, each with whether a rule is now installed."""
        for ep in rules:
            resolve_endpoint(ep, self.ENDPOINTS)
        return {self.set_fault(ep, rule): rule is not None for ep, rule in rules.items()}

    def draw_fault(self, endpoint: str) -> Fault | None:
        """The fault to apply to this call of ``endpoint``, if the draw says so."""
        rule = self.faults.get(endpoint)
        return rule if rule is not None and rule.fires(self.rng) else None
