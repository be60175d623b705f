"""What every `consent-relay` command module shares: exit codes, the one-line error, the parser
class, registering a command and what it needs (no store, the store, or the relay's parts)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Awaitable, Callable, NoReturn

EXIT_OK, EXIT_FINDING, EXIT_USAGE = 0, 1, 2
PROG = "consent-relay"

Handler = Callable[[Any, argparse.Namespace], Awaitable[int]]


class Parser(argparse.ArgumentParser):
    """argparse that reports bad input as one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message}")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    print(f"{PROG}: error: {message}" if not message.startswith(PROG) else f"{message}", file=sys.stderr)
    raise SystemExit(code)


def common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=argparse.SUPPRESS, help="config file (default $CONSENT_RELAY_CONFIG, else ./config.toml, else ./config.example.toml)")
    return common


def add_command(
    sub: Any,
    common: argparse.ArgumentParser,
    name: str,
    handler: Handler,
    help_text: str,
    *,
    needs_store: bool = True,
    needs_relay: bool = False,
) -> argparse.ArgumentParser:
    """`handler(services, args)` with the store open; `needs_store=False`: `handler(config, args)`;
    `needs_relay`: `handler(parts, args)`, the relay's parts (relay.assembly.RelayParts) with the
    store open, for a command that delivers mail."""
    parser = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
    parser.set_defaults(handler=handler, needs_store=needs_store, needs_relay=needs_relay)
    return parser


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False, default=str))
