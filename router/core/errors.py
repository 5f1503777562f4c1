"""Errors raised by the pure core. Each names the offending value and what was expected."""

from __future__ import annotations

from collections.abc import Iterable


class CoreError(ValueError):
    """Base class: bad input to the routing core."""


class UnknownAgentError(CoreError):
    def __init__(self, kf_account: str, where: str) -> None:
        super().__init__(
            f"{where}: unknown agent {kf_account!r} (expected an agent seen in a snapshot "
            "or configured with AgentConfigured)"
        )
        self.kf_account = kf_account


class UnknownCustomerError(CoreError):
    def __init__(self, openid: str, where: str) -> None:
        super().__init__(f"{where}: unknown customer {openid!r}")
        self.openid = openid


class ConfigError(CoreError):
    """A setting is invalid; the message names the key. Errors found in a configuration file
    (``ConfigError.in_file``) carry ``file`` and ``problems`` (``(key path, reason)`` pairs), and ``str()``
    has one line per problem: ``FILE: KEY: REASON``."""

    file: str | None = None
    problems: tuple[tuple[str, str], ...] = ()

    @classmethod
    def in_file(cls, file: str, problems: Iterable[tuple[str, str]]) -> ConfigError:
        found = tuple(problems)
        err = cls(
            "\n".join(f"{file}: {key}: {reason}" if key else f"{file}: {reason}" for key, reason in found)
        )
        err.file, err.problems = file, found
        return err
