"""``kfrouter policies``: list installed routing policies as ``name<TAB>origin``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("policies", help="list installed routing policies (name<TAB>origin)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from kfrouter.policies.registry import available_policies

    for name, origin in available_policies():
        print(f"{name}\t{origin}")
    return 0
