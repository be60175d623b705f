"""CPU per message of the relay's shell around the policy core (issue 20), without the SMTP server:
RelayHandler.handle_MAIL / handle_RCPT / handle_DATA → Pipeline → copies → deliver → Upstream to
smtp-sink → DecisionRecorder, in one process, as a worker of `[smtp] workers = 2` runs it (metrics
in multiprocess mode, JSON log lines at info to a file, no helper process).

`python -m bench.bench_permsg [--checkout A --checkout B] [--messages 2000] [--rounds 5]` runs each
checkout's own code (its .venv, its relay/) in a child process per round, the checkouts alternating,
and prints the child's CPU time (user+system) per message after a warm-up, the median of the rounds
and the ratio of each checkout against the first. The marketing stream with consent, 1 recipient
(`--rcpts`), bench/message.eml, no DKIM key (`--dkim`: an RSA-2048 key for the From domain, as the
throughput bench's relay-dkim target has). `--personal`: every message's body differs (a line of its
own after the body, as a personalised campaign's would), so no message finds its body already walked
(relay/engine/body_walks.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent


def _child(args: argparse.Namespace) -> None:
    """Runs in the checkout under test (its relay/ and bench/ first on sys.path)."""
    import asyncio
    import time
    from contextlib import ExitStack

    workdir = Path(tempfile.mkdtemp(prefix="consent-relay-permsg-"))
    workdir.chmod(0o755)  # smtp-sink runs as postfix when we are root: it writes its dump below
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(workdir / "metrics")
    (workdir / "metrics").mkdir()

    from aiosmtpd.smtp import Envelope, Session

    from bench.relay_config import recipients, write_consent_csv, write_relay_config
    from bench.throughput import MESSAGE, RECIPIENT, SENDER, Sink, free_port
    from relay.assembly import build_relay
    from relay.config import load_config
    from relay.log import configure_logging
    from relay.smtp.handler import RelayHandler
    from relay.smtp.server import AuthLockout

    content = MESSAGE.read_bytes().replace(b"\n", b"\r\n")  # as it arrives over SMTP (smtp-source sends CRLF)
    rcpts = recipients(RECIPIENT, args.rcpts)

    class _Server:
        busy = False

    async def run(stack: ExitStack) -> float:
        sink = Sink(workdir / "sink", stack)
        overrides: dict[str, object] = {"smtp": {"helper_process": False}}
        if args.dkim:
            from bench.throughput import dkim_key

            overrides["dkim"] = {"keys": [dkim_key(workdir)]}
        path = write_relay_config(
            workdir / "relay.toml", smtp_port=free_port(), upstream_port=sink.port, admin_port=free_port(),
            public_port=free_port(), store_path=workdir / "relay.db", workers=1, stream_kind="marketing",
            overrides=overrides,
        )
        csv = write_consent_csv(workdir / "consent.csv", rcpts)
        subprocess.run(
            [sys.executable, "-m", "relay.cli.main", "-c", str(path), "consent", "import", str(csv), "--account", "shop"],
            check=True, capture_output=True, cwd=workdir,
        )
        config = load_config(path)
        log = stack.enter_context(open(workdir / "relay.log", "w"))
        configure_logging(config.logging.level, config.logging.log_recipients, stream=log)
        parts = build_relay(config)
        await parts.services.store.open()
        parts.recorder.start()
        handler = RelayHandler(parts.pipeline, AuthLockout(10, 60))
        server = _Server()
        loop = asyncio.get_running_loop()

        sent = 0

        async def one() -> None:
            nonlocal sent
            sent += 1
            session = Session(loop)
            session.peer = ("127.0.0.1", 40000)
            envelope = Envelope()
            reply = await handler.handle_MAIL(server, session, envelope, SENDER, [])  # type: ignore[arg-type]
            assert reply.startswith("250"), reply
            for r in rcpts:
                reply = await handler.handle_RCPT(server, session, envelope, r, [])  # type: ignore[arg-type]
                assert reply.startswith("250"), reply
            envelope.original_content = content + b"ref %d\r\n" % sent if args.personal else content
            reply = await handler.handle_DATA(server, session, envelope)  # type: ignore[arg-type]
            assert reply.startswith("250"), reply

        async def batch(n: int) -> None:
            sem = asyncio.Semaphore(args.concurrency)

            async def guarded() -> None:
                async with sem:
                    await one()

            await asyncio.gather(*(guarded() for _ in range(n)))

        try:
            await batch(args.warmup)
            await parts.recorder.flush()
            profile = None
            if args.profile:
                import cProfile

                profile = cProfile.Profile()
                profile.enable()
            start = time.process_time()
            if args.messages:
                await batch(args.messages)
            await parts.recorder.flush()
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
            return (time.process_time() - start) / max(1, args.messages)
        finally:
            await parts.recorder.close()
            await parts.upstream.close()
            await parts.services.store.close()

    import shutil

    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        try:
            import uvloop

            per_message = uvloop.run(run(stack))
        except ImportError:
            per_message = asyncio.run(run(stack))
    print(json.dumps({"us_per_message": per_message * 1e6}))


def _child_argv(args: argparse.Namespace, checkout: Path, messages: int) -> list[str]:
    return [
        str(checkout / ".venv" / "bin" / "python"), str(HERE), "--child", "--messages", str(messages),
        "--warmup", str(args.warmup), "--rcpts", str(args.rcpts), "--concurrency", str(args.concurrency),
        *(["--dkim"] if args.dkim else []), *(["--personal"] if args.personal else []),
    ]


def _callgrind(args: argparse.Namespace, checkouts: list[Path]) -> int:
    """Instructions per message, counted by valgrind (callgrind): a figure the other jobs on a
    shared machine do not move. Each checkout runs twice, with no measured message and with
    `--messages`; the difference divided by the messages is the count per message (the setup,
    imports and warm-up cancel out). All children run at once."""
    runs = {}
    for checkout in checkouts:
        for messages in (0, args.messages):
            argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *_child_argv(args, checkout, messages)]
            runs[checkout, messages] = subprocess.Popen(
                argv, cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
    collected = {}
    for key, proc in runs.items():
        out, err = proc.communicate()
        found = [line for line in err.splitlines() if "Collected :" in line]
        if proc.returncode != 0 or not found:
            print(err[-3000:], file=sys.stderr)
            return 1
        collected[key] = int(found[-1].rsplit(":", 1)[1])
    first = None
    print(f"\n| checkout | instructions/message (callgrind, {args.messages} messages after {args.warmup}) | ratio |\n|---|---:|---:|")
    for checkout in checkouts:
        per = (collected[checkout, args.messages] - collected[checkout, 0]) / args.messages
        first = first or per
        print(f"| {checkout.name} | {per:,.0f} | {per / first:.3f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", help="a checkout with its own .venv (default: ../base and this one)")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rcpts", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--dkim", action="store_true", help="an RSA-2048 DKIM signature on every copy")
    parser.add_argument("--personal", action="store_true", help="a body of its own for every message (no body walked twice)")
    parser.add_argument("--callgrind", action="store_true", help="count instructions with valgrind instead of CPU time")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="with --child: cProfile stats of the measured messages to this file")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return 0
    checkouts = [Path(c).resolve() for c in (args.checkout or [str(REPO.parent / "base"), str(REPO)])]
    if args.callgrind:
        return _callgrind(args, checkouts)
    results: dict[Path, list[float]] = {c: [] for c in checkouts}
    for round_ in range(args.rounds):
        for checkout in checkouts if round_ % 2 == 0 else reversed(checkouts):
            child = subprocess.run(
                _child_argv(args, checkout, args.messages), cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout)), capture_output=True, text=True,
            )
            if child.returncode != 0:
                print(child.stderr, file=sys.stderr)
                return 1
            us = json.loads(child.stdout.strip().splitlines()[-1])["us_per_message"]
            results[checkout].append(us)
            print(f"round {round_ + 1} {checkout.name}: {us:.0f} µs/message", flush=True)
    first = statistics.median(results[checkouts[0]])
    print("\n| checkout | µs/message, each round | median | ratio |\n|---|---|---:|---:|")
    for checkout in checkouts:
        median = statistics.median(results[checkout])
        rounds = ", ".join(f"{us:.0f}" for us in results[checkout])
        print(f"| {checkout.name} | {rounds} | {median:.0f} | {median / first:.2f} |")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"] or "--child" in sys.argv:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE.parent]
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(REPO)))
    raise SystemExit(main())
