"""kfrouter: agent routing and session assignment for WeChat Official Account customer service."""

__version__ = "0.1.0"
