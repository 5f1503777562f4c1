"""The ``kfrouter`` command line: one sub-command per module, each registered from its own module.

Each entry of ``_COMMAND_MODULES`` is a module exposing ``register(subparsers)``, which adds its
sub-command(s) with ``set_defaults(func=...)``; ``func(args) -> int`` is the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

_COMMAND_MODULES: tuple[str, ...] = (
    "kfrouter.policies.cli",
    "kfrouter.router.admin_cli",
    "kfrouter.router.config_cli",
    "kfrouter.router.demo_cli",
    "kfrouter.router.doctor_cli",
    "kfrouter.router.report_cli",
    "kfrouter.router.run_cli",
    "kfrouter.sim.cli",
    "kfrouter.sim.fake_cli",
    "kfrouter.sim.wecom_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kfrouter",
        description="Agent routing and session assignment for WeChat Official Account customer service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
