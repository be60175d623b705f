"""Instructions per message of relay.engine.copies.CopyMaker for the marketing stream, with what the
upstream does to each copy before it is written (smtp_client.dot_stuffed), counted by valgrind
(callgrind, user space only): figures the other jobs on a shared machine do not move.

`python -m bench.callgrind_copies BEFORE_CHECKOUT [AFTER_CHECKOUT] [--messages 300] [--rcpts 1 10]`

A campaign's messages one after another (bench/message.eml, each its own Message-ID and relay id), as
bench/bench_copymaker runs them: per copy a delivery id, /u/ token, mailto and VERP tokens, list
headers, DKIM preparation with a stand-in b= value (no RSA step), then the copy's wire form. Each
checkout's own venv runs it twice under valgrind, with a warm-up only and with the warm-up and N more
messages; the difference divided by N is the count per message. All children run at once. The child
code is this file's, run with the checkout first on sys.path (a checkout whose copies carry no
wire_ready flag stuffs every copy).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parent.parent
WARMUP = 50


def _child(count: int, rcpts: int) -> None:
    import asyncio
    import inspect
    from datetime import datetime, timezone

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from bench.bench_copymaker import ACCOUNT, CONFIG, RAW, STREAM, Ids, StandInSigner
    from policies.facts import MessageFacts
    from policies.message import parse_message
    from policies.profiles import load_profile
    from relay.delivery import smtp_client
    from relay.delivery.dkim import DkimKey, DkimSigner
    from relay.engine.copies import CopyMaker
    from relay.engine.transaction import Transaction
    from relay.unsubscribe.links import CopyLinks
    from relay.unsubscribe.tokens import TokenCodec

    has_ready = "ready" in inspect.signature(smtp_client.dot_stuffed).parameters
    # Ed25519: an RSA key's generation takes a random number of instructions, more than the copies do.
    key = DkimKey("shop.example", "bench", ed25519.Ed25519PrivateKey.generate(), "ed25519-sha256")
    links = CopyLinks(CONFIG, TokenCodec([b"bench secret, 32 bytes at least.."]))
    facts = MessageFacts(ACCOUNT, "news@shop.example", datetime.now(timezone.utc), load_profile("strict").params, STREAM, message=parse_message(RAW))
    maker = CopyMaker(CONFIG, links, StandInSigner(DkimSigner([key])), Ids())  # type: ignore[arg-type]
    recipients = [f"reader{i}@example.net" for i in range(rcpts)]

    async def run() -> None:
        for n in range(WARMUP + count):
            raw = RAW.replace(b"<20251117093000.bench.", b"<%d.bench." % n, 1)
            txn = Transaction(f"01JBENCH{n:018d}", "192.0.2.1", "news@shop.example")
            async for copy in maker(txn, facts, {}, raw, recipients):
                if has_ready:
                    smtp_client.dot_stuffed(copy.content, ready=copy.wire_ready)
                else:
                    smtp_client.dot_stuffed(copy.content)

    asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.callgrind_copies", description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=REPO)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rcpts", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.count, args.rcpts[0])
        return 0
    from bench import callgrind_counts  # the parent only: see bench/callgrind_counts.py

    checkouts = [args.before.resolve(), args.after.resolve()]
    runs = {}
    for checkout in checkouts:
        for rcpts in args.rcpts:
            for n in (0, args.messages):
                argv_ = [*callgrind_counts.VALGRIND, str(checkout / ".venv" / "bin" / "python"),
                         str(HERE), str(checkout), "--child", "--count", str(n), "--rcpts", str(rcpts)]
                runs[checkout, rcpts, n] = subprocess.Popen(
                    argv_, cwd=checkout, env=dict(os.environ, PYTHONPATH=str(checkout), PYTHONHASHSEED="0"),
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                )
    collected = callgrind_counts.collected(runs)
    if collected is None:
        return 1
    print(f"| instructions | {checkouts[0]} | {checkouts[1]} | after ÷ before |\n|---|---:|---:|---:|")
    for rcpts in args.rcpts:
        per = [(collected[c, rcpts, args.messages] - collected[c, rcpts, 0]) / args.messages for c in checkouts]
        print(f"| per message, {rcpts} recipient(s) | {per[0]:,.0f} | {per[1]:,.0f} | {per[1] / per[0]:.3f} |")
        print(f"| per copy, {rcpts} recipient(s) | {per[0] / rcpts:,.0f} | {per[1] / rcpts:,.0f} | {per[1] / per[0]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
