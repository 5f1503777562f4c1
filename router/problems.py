"""Operator problems, told once in plain words.

A WeChat errcode that needs a person rather than a retry (65400: the new customer service is not
enabled; 40164: the server's IP is not whitelisted; 65402: an agent is not bound, ...) is logged the
first time it is met, with the same meaning and fix ``kfrouter doctor`` prints, instead of a warning
on every poll. It is told again only after it went away (``clear``, called when WeChat answers again)
and came back. At start the daemon runs the doctor's read-only checks once and logs each problem and
warning the same way (``log_check_results``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kfrouter.router.doctor import CheckResult, explain
from kfrouter.router.edges.errors import WeChatError

log = logging.getLogger("kfrouter.problems")

_TOKEN_ENDPOINTS = ("cgi-bin/token", "cgi-bin/stable_token")

# Codes that need a person to change something (console settings, credentials, agent accounts). Codes
# that are part of normal operation (65414/65415: another agent / agent offline; 45009/45011: rate limits,
# backed off; 40001 on an API call: the token is refreshed) are handled by the daemon, not told here.
OPERATOR_CODES = frozenset({40013, 40125, 40164, 40243, 43003, 48001, 65400, 65401, 65402})


class ProblemReporter:
    """Collects the operator problems seen while running; the client calls ``on_error`` for each
    failed call (``WeChatClient.on_error``)."""

    def __init__(self) -> None:
        self.active: dict[int, str] = {}  # errcode -> the explanation logged

    def on_error(self, exc: WeChatError) -> None:
        endpoint = exc.endpoint or ""
        token = endpoint.strip("/").endswith(_TOKEN_ENDPOINTS)
        if exc.errcode not in OPERATOR_CODES and not (token and exc.errcode == 40001):
            return  # -1, network errors, rate limits, routine session errors: handled, not a person's job
        text = explain(exc.errcode, token_request=token)
        if text is None or exc.errcode in self.active:
            return
        self.active[exc.errcode] = text
        log.error("WeChat answered %s to %s. %s", exc.errcode, endpoint or "a call", text)

    def known(self, errcode: int) -> bool:
        """True when ``errcode`` is an operator problem already told (callers may then log quietly)."""
        return errcode in self.active

    def clear(self) -> None:
        """WeChat answered normally again: the problems told so far are over."""
        if self.active:
            log.info("WeChat answers normally again (was: errcode %s)", ", ".join(map(str, self.active)))
            self.active.clear()


def log_check_results(results: Iterable[CheckResult]) -> int:
    """Log the doctor's warnings and problems at start, in its words; returns the number of problems."""
    problems = 0
    for r in results:
        if r.status == "ok":
            continue
        level = logging.ERROR if r.is_problem else logging.WARNING
        problems += r.is_problem
        parts = [f"start-up check {r.name}: {r.status}: {r.title}"]
        if r.detail:
            parts.append(f"means: {r.detail}")
        if r.fix:
            parts.append(f"fix: {r.fix}")
        log.log(level, " | ".join(parts))
    return problems
