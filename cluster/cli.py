"""The `flowrouter` command. Each sub-command lives in `cluster/commands/<name>.py` and exposes
`register(subparsers)`; this file only assembles them, so stages add commands without touching it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

import cluster.commands as commands_pkg


class CliError(Exception):
    """A user-facing failure: printed as one line naming the problem, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowrouter", description="Incident tickets to troubleshooting workflows.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in sorted(pkgutil.iter_modules(commands_pkg.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"cluster.commands.{mod.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"flowrouter {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
