"""The one entry point, `consent-relay`: argument parsing and exit codes (0 ok, 1 finding, 2 bad input)."""

from __future__ import annotations

import os
import signal
import sys


def _exit_quietly(signum: int, frame: object) -> None:
    os._exit(130)


# As the program (not imported by a test): a Ctrl-C while the modules below load ends the process
# at once and quietly, as nothing has started yet; main() hands SIGINT back to Python's handler.
if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "consent-relay":
    signal.signal(signal.SIGINT, _exit_quietly)

import argparse
import asyncio
import getpass
from typing import Any, Callable, Sequence

from relay.cli import account as cli_account
from relay.cli import bounce as cli_bounce
from relay.cli import complaint as cli_complaint
from relay.cli import consent as cli_consent
from relay.cli import events as cli_events
from relay.cli import explain as cli_explain
from relay.cli import quarantine as cli_quarantine
from relay.cli.common import EXIT_OK, PROG, Handler, Parser, add_command, common_options, fail, print_json
from relay.config import Config, config_path_from, config_warnings, load_config
from relay.errors import ConfigError, NotFound, RelayError, StoreUnavailable, UsageError

# The command groups besides the core commands below, in the order `--help` lists them.
COMMAND_GROUPS = (cli_account, cli_explain, cli_consent, cli_quarantine, cli_complaint, cli_bounce, cli_events)

def build_parser() -> Parser:
    common = common_options()
    parser = Parser(prog=PROG, parents=[common], description="SMTP relay proxy enforcing permission-based e-mail policy")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    serve = add_command(sub, common, "serve", _serve, "run the relay", needs_store=False)
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--inherit", default=None, help=argparse.SUPPRESS)  # a worker's fds, from its parent
    serve.add_argument(
        "--sink",
        action="store_true",
        help="when nothing answers on the upstream's address, capture delivered mail there (consent-relay sink)",
    )
    sink = add_command(
        sub, common, "sink", _sink, "a capture upstream for trying the relay: writes each copy to var/delivered/", needs_store=False
    )
    sink.add_argument("--listen", metavar="HOST:PORT", help="where to listen (default: the config's [upstream] host and port)")
    sink.add_argument("--dir", help="where copies go (default: var/delivered/ next to the config file)")
    sink.add_argument("--list", action="store_true", help="list the captured copies, oldest first, and exit")
    sink.add_argument("--json", action="store_true", help="with --list: a JSON array")
    add_command(sub, common, "check-config", _check_config, "validate the config file and exit", needs_store=False)
    # Needs no config file; -c is accepted (and ignored) like on every other command (docs/SPEC.md §11).
    sub.add_parser(
        "hash-password", parents=[common], help="read a secret on stdin and print its hash"
    ).set_defaults(handler=_hash_password, needs_store=False, no_config=True)
    for group in COMMAND_GROUPS:
        group.register(sub, common)
    return parser


async def _check_config(config: Config, args: argparse.Namespace) -> int:
    from relay.app import listener_tls_context
    from relay.delivery.dkim_keys import load_configured_keys

    load_configured_keys(config)
    listener_tls_context(config)
    for key, problem in config_warnings(config):
        print(f"{PROG}: warning: {key}: {problem}", file=sys.stderr)
    print(f"{config.path}: OK ({len(config.accounts)} accounts, profile {config.policy.profile}, mode {config.policy.mode})")
    from relay.feedback.checks import feedback_notes

    for note in feedback_notes(config):
        print(f"note: {note}")
    return EXIT_OK


async def _serve(config: Config, args: argparse.Namespace) -> int:
    from relay.app import serve
    from relay.smtp import sink

    if not getattr(args, "sink", False) or await sink.answers(config.upstream.host, config.upstream.port):
        return await serve(config, worker_index=args.worker_index, inherited=args.inherit)
    directory = sink.delivered_dir(config.path)
    try:
        server = await sink.start_sink(config.upstream.host, config.upstream.port, directory)
    except OSError as exc:
        fail(f"nothing answers on the upstream {config.upstream.host}:{config.upstream.port} and the sink cannot listen there: {exc.strerror or exc}", 1)
    print(
        f"sink: nothing answered on the upstream {config.upstream.host}:{config.upstream.port}; capturing delivered "
        f"mail there in {sink.shown(directory)}/ (list: consent-relay sink --list)",
        flush=True,
    )
    try:
        return await serve(config, worker_index=args.worker_index, inherited=args.inherit)
    finally:
        server.close()
        await server.wait_closed()


async def _sink(config: Config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from relay.smtp import sink

    directory = Path(args.dir) if args.dir else sink.delivered_dir(config.path)
    if args.list:
        copies = sink.list_copies(directory)
        if args.json:
            print_json([sink.describe(c) for c in copies])
        else:
            for c in copies:
                print(f"{sink.shown(c.path)}  {c.relay_id or '-'}  <{c.mail_from}> -> {', '.join(c.rcpt_tos)}  {c.subject}")
            if not copies:
                print(f"no copies in {sink.shown(directory)}/", file=sys.stderr)
        return EXIT_OK
    host, port = config.upstream.host, config.upstream.port
    if args.listen:
        host, _, port_text = args.listen.rpartition(":")
        if not host or not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            fail(f"--listen: expected HOST:PORT, got {args.listen!r}")
        host, port = host.strip("[]"), int(port_text)
    return await sink.run_sink(host, port, directory)


async def _hash_password(_: Any, args: argparse.Namespace) -> int:
    from relay.passwords import hash_password

    if sys.stdin.isatty():
        secret = getpass.getpass("Secret: ")
        if getpass.getpass("Again: ") != secret:
            fail("the two entries differ")
    else:
        secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        fail("empty secret")
    print(hash_password(secret))
    return EXIT_OK


async def _run_with_store(handler: Handler, config: Config, args: argparse.Namespace) -> int:
    from relay.log import configure_logging
    from relay.services import Services

    configure_logging("warning", config.logging.log_recipients)
    services = Services.build(config)
    await services.store.open()
    try:
        return await handler(services, args)
    finally:
        await services.store.close()


async def _run_with_relay(handler: Handler, config: Config, args: argparse.Namespace) -> int:
    from relay.assembly import opened_relay
    from relay.log import configure_logging

    configure_logging("warning", config.logging.log_recipients)
    async with opened_relay(config) as parts:
        return await handler(parts, args)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    import uvloop

    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    if signal.getsignal(signal.SIGINT) is _exit_quietly:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # a Ctrl-C at any point, even before the event loop runs: no traceback
        return 130


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "no_config", False):
            return asyncio.run(args.handler(None, args))
        config = load_config(config_path_from(getattr(args, "config", None)))
        if args.needs_relay:
            return asyncio.run(_run_with_relay(args.handler, config, args))
        if args.needs_store:
            return asyncio.run(_run_with_store(args.handler, config, args))
        if args.handler is _serve:
            # The relay spends much of its time in the event loop's socket handling; uvloop does that in C.
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                return runner.run(args.handler(config, args))
        return asyncio.run(args.handler(config, args))
    except ConfigError as exc:
        fail(f"config: {exc}")
    except UsageError as exc:
        fail(str(exc))
    except NotFound as exc:
        fail(str(exc) or "not found")
    except StoreUnavailable as exc:
        fail(f"store unavailable: {exc}", 75)
    except RelayError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
