"""How a reservation's time is split between waiting to send ``kfsession/create`` and the call itself.

The engine reserves an agent for ``reservation_timeout_s`` and then routes the customer again. A create
sent after that could open a second session, so a create must *end* before its reservation does:

- the call is bounded by ``call_s`` = the configured create timeout plus 1 s for a token fetch, but never
  more than half of the reservation (less ``CREATE_MARGIN_S``, the time its answer needs to reach the
  engine);
- a create that waited longer than ``send_within_s`` (the rest) is not sent.

Both parts are at least ``MIN_CREATE_CALL_S`` for every reservation of ``MIN_RESERVATION_S`` or more, so any
create timeout works with any accepted reservation; the config refuses shorter reservations. Pure: no I/O.
"""

from __future__ import annotations

from attrs import frozen

CREATE_MARGIN_S = 0.5
"""A create's answer reaches the engine at least this long before its reservation ends."""
MIN_CREATE_CALL_S = 1.0
"""The shortest time worth giving a ``kfsession/create`` (and the shortest send window)."""
MIN_RESERVATION_S = CREATE_MARGIN_S + 2 * MIN_CREATE_CALL_S
"""The smallest ``[engine] reservation_timeout_s`` that works."""
TOKEN_SLACK_S = 1.0
"""Added to the HTTP timeout of one create: the call may first have to fetch an access token."""


@frozen
class CreateBudget:
    """``call_s``: the longest one create may take; ``send_within_s``: the longest it may wait unsent."""

    call_s: float
    send_within_s: float


def create_budget(reservation_s: float, create_timeout_s: float) -> CreateBudget:
    """Split ``reservation_s`` (>= ``MIN_RESERVATION_S``) for creates with HTTP timeout ``create_timeout_s``."""
    if not reservation_s >= MIN_RESERVATION_S:
        raise ValueError(f"reservation_timeout_s must be >= {MIN_RESERVATION_S:g}, got {reservation_s!r}")
    if not create_timeout_s > 0:
        raise ValueError(f"create_timeout_s must be > 0, got {create_timeout_s!r}")
    usable = reservation_s - CREATE_MARGIN_S
    call = min(create_timeout_s + TOKEN_SLACK_S, usable / 2)
    return CreateBudget(call_s=call, send_within_s=usable - call)
