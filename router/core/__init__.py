"""The pure routing core: events in, commands out.

Rules for everything under ``router.core``: no asyncio, no sockets, no sqlite, no wall clock, no global
random, no logging I/O. Time is the ``now`` argument; randomness, if ever needed, is an injected
``random.Random``. The same Engine runs in the daemon, the simulator and the tests.
"""

from kfrouter.router.core.commands import CloseSession, Command, CreateSession, SendText
from kfrouter.router.core.engine import Engine, EngineConfig, Route
from kfrouter.router.core.errors import ConfigError, CoreError, UnknownAgentError, UnknownCustomerError
from kfrouter.router.core.events import (
    AgentConfigured,
    AgentRemoved,
    AgentSessionsSeen,
    AgentsSeen,
    CloseFailed,
    CreateFailed,
    CustomerLeft,
    CustomerRequested,
    Event,
    ReassignRequested,
    SessionClosed,
    SessionCreated,
    SessionSwitched,
)
from kfrouter.router.core.model import AgentRow, AgentView, CustomerState, WaitingView

__all__ = [
    "AgentConfigured",
    "AgentRemoved",
    "AgentRow",
    "AgentSessionsSeen",
    "AgentView",
    "AgentsSeen",
    "CloseFailed",
    "CloseSession",
    "Command",
    "ConfigError",
    "CoreError",
    "CreateFailed",
    "CreateSession",
    "CustomerLeft",
    "CustomerRequested",
    "CustomerState",
    "Engine",
    "EngineConfig",
    "Event",
    "ReassignRequested",
    "Route",
    "SendText",
    "SessionClosed",
    "SessionCreated",
    "SessionSwitched",
    "UnknownAgentError",
    "UnknownCustomerError",
    "WaitingView",
]
