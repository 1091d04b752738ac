"""`sluice keys new | hash`: make an API key and the hash that goes into a `[[keys]]` entry.

The key is read from stdin, never from argv, so it lands neither in shell history nor in `ps`.
"""

from __future__ import annotations

import argparse
import sys

from serve.tenancy.keys import hash_key, new_key


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make API keys and their hashes for [[keys]] in the config")
    ks = p.add_subparsers(dest="keys_command", required=True)
    ks.add_parser("new", help="print a new random key and, on the next line, its hash").set_defaults(func=_new)
    ks.add_parser("hash", help="read a key on stdin (one line), print its 'sha256:...' hash").set_defaults(func=_hash)


def _new(args: argparse.Namespace) -> int:
    key = new_key()
    print(key)
    print(hash_key(key))
    return 0


def _hash(args: argparse.Namespace) -> int:
    key = sys.stdin.readline().rstrip("\r\n")  # `echo KEY |` adds a newline that is not part of the key
    if not key:
        print("error: no key on stdin", file=sys.stderr)
        return 1
    print(hash_key(key))
    return 0
