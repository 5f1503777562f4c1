"""kfrouter: agent routing and session assignment for WeChat customer service.

The installed distribution holds one top-level name, ``kfrouter``, with three packages under it:
``kfrouter.router`` (engine, wire codecs, edges, daemon), ``kfrouter.policies`` (routing policies and the
plug-in loader) and ``kfrouter.sim`` (simulator and fake WeChat). In the source tree they stay at the
repository's top level (``router/``, ``policies/``, ``sim/``) and setuptools maps them here
(``package-dir`` in pyproject.toml); the links beside this file let tools that read the source tree
(mypy) see the same names. Import them as ``kfrouter.router...``, never as ``router...``.
"""

from kfrouter.router import __version__

__all__ = ["__version__"]
