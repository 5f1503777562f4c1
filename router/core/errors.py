"""Errors raised by the pure core. Each names the offending value and what was expected."""


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
    """A setting of the engine or of a policy is invalid; the message names the key."""
