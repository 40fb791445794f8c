"""``python -m producer.web [--host H] [--port P]``: the gateway on its own, as ``pagewire http`` runs it."""

from __future__ import annotations

import argparse
import asyncio
import sys

from producer.web.command import add_parser


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m producer.web")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["http", *sys.argv[1:]])
    code: int = asyncio.run(args.func(args))
    return code


if __name__ == "__main__":
    sys.exit(main())
