"""`sluice` — one entry point: serve | models | bench | quantize | keys."""

from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand -> module with `add_parser(subparsers)`. Imported lazily so `sluice models list`
# does not pay for torch or the benchmark stack.
COMMANDS: dict[str, str] = {
    "serve": "serve.cli_serve",
    "models": "serve.cli_models",
    "bench": "benchmarks.cli",
    "quantize": "serve.quantize.cli",
    "keys": "serve.cli_keys",
    "run": "serve.cli_run",
    "ps": "serve.cli_ps",
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="LLM inference optimization and serving engine")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    wanted = [a for a in argv if a in COMMANDS][:1] or list(COMMANDS)
    for name in wanted:
        importlib.import_module(COMMANDS[name]).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
