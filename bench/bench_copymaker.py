"""CPU of relay.engine.copies.CopyMaker as the relay runs it for the marketing stream: a campaign's
messages one after another (bench/message.eml, each with its own Message-ID and relay id), each
copy with its own delivery id, /u/ token, mailto and VERP tokens, list headers and DKIM signature.

    .venv/bin/python -m bench.bench_copymaker [--rounds 2000]
    /work/wt/base/.venv/bin/python bench/bench_copymaker.py   # another checkout: its own code

Rows (CPU microseconds, thread time, median of --rounds): the copies of one message for 1 and 10
recipients short of the RSA step (a stand-in b= value), the same with what the upstream does to each
copy before writing it (smtp_client.dot_stuffed; a copy that says it is wire_ready is not scanned),
the same at 1 recipient with RSA-2048 signed
inline, and one RSA-2048 signature through relay.delivery.dkim.sign_digest beside cryptography's own
call with fresh padding objects. The package is imported from sys.path: a script run from another
checkout's venv measures that checkout's code, so two checkouts run alternately give a same-run ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from policies.facts import AccountFacts, MessageFacts, StreamFacts
from policies.message import parse_message
from policies.profiles import load_profile
from relay.delivery import smtp_client
from relay.delivery.dkim import DkimKey, DkimSigner, sign_digest
from relay.engine.copies import CopyMaker
from relay.engine.signing import CopySigner
from relay.engine.transaction import Transaction
from relay.unsubscribe.links import CopyLinks
from relay.unsubscribe.tokens import TokenCodec

RAW = (Path(__file__).resolve().parent / "message.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
ACCOUNT = AccountFacts(
    id="shop", name="Shop", domains=frozenset({"shop.example"}), legal_name="Shop B.V.",
    postal_address="Keizersgracht 1, 1015 AA Amsterdam", registration_number="12345678",
)
STREAM = StreamFacts("newsletter", "marketing", "newsletter")
CONFIG: Any = SimpleNamespace(  # what CopyMaker and CopyLinks read of relay.config.Config
    unsubscribe=SimpleNamespace(placeholder="{{unsubscribe_url}}", mailto_domain="relay.bench", csa_complaints=""),
    bounces=SimpleNamespace(verp=True, verp_transactional=False),
    http=SimpleNamespace(public_base_url="https://relay.bench/"),
)


class Ids:
    def __init__(self) -> None:
        self.next = 1_000_000

    async def take(self) -> int:
        self.next += 1
        return self.next


class StandInSigner(CopySigner):
    """CopySigner with a stand-in b= value: everything but the private-key step."""

    async def _signatures(self, work: Any) -> list[bytes]:
        return [b"\x01" * 256 for job in work for _ in job.digests]


def cpu_us(fn: Callable[[], object], rounds: int) -> float:
    for _ in range(min(50, rounds)):
        fn()
    samples = []
    for _ in range(rounds):
        start = time.thread_time_ns()
        fn()
        samples.append((time.thread_time_ns() - start) / 1e3)
    return statistics.median(samples)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_copymaker", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000)
    args = parser.parse_args(argv)
    private = rsa.generate_private_key(65537, 2048)
    key = DkimKey("shop.example", "bench", private, "rsa-sha256")
    links = CopyLinks(CONFIG, TokenCodec([b"bench secret, 32 bytes at least.."]))
    profile = load_profile("strict")
    facts = MessageFacts(ACCOUNT, "news@shop.example", datetime.now(timezone.utc), profile.params, STREAM, message=parse_message(RAW))
    loop = asyncio.new_event_loop()
    serial = [0]

    has_ready = "ready" in inspect.signature(smtp_client.dot_stuffed).parameters  # not before issue 20's session 19

    def copies(signer: CopySigner, count: int, wire: bool = False) -> Callable[[], object]:
        maker = CopyMaker(CONFIG, links, signer, Ids())  # type: ignore[arg-type]
        rcpts = [f"reader{i}@example.net" for i in range(count)]

        async def drain(raw: bytes, txn: Transaction) -> list[Any]:
            out = [copy async for copy in maker(txn, facts, {}, raw, rcpts)]
            if wire:
                for copy in out:
                    if has_ready:
                        smtp_client.dot_stuffed(copy.content, ready=copy.wire_ready)
                    else:
                        smtp_client.dot_stuffed(copy.content)
            return out

        def make() -> object:
            serial[0] += 1  # each message of the campaign its own Message-ID and relay id
            raw = RAW.replace(b"<20251117093000.bench.", b"<%d.bench." % serial[0], 1)
            txn = Transaction(f"01JBENCH{serial[0]:018d}", "192.0.2.1", "news@shop.example")
            out = loop.run_until_complete(drain(raw, txn))
            assert len(out) == count and out[0].content.startswith(b"DKIM-Signature:")
            return out

        return make

    digest = b"\x02" * 32
    rows = [
        ("CopyMaker short of RSA, 1 recipient", cpu_us(copies(StandInSigner(DkimSigner([key])), 1), args.rounds)),
        ("CopyMaker short of RSA, 10 recipients", cpu_us(copies(StandInSigner(DkimSigner([key])), 10), args.rounds // 4)),
        ("  + dot-stuffing, 1 recipient", cpu_us(copies(StandInSigner(DkimSigner([key])), 1, wire=True), args.rounds)),
        ("  + dot-stuffing, 10 recipients", cpu_us(copies(StandInSigner(DkimSigner([key])), 10, wire=True), args.rounds // 4)),
        ("CopyMaker with RSA-2048, 1 recipient", cpu_us(copies(CopySigner(DkimSigner([key])), 1), args.rounds // 2)),
        ("RSA-2048: dkim.sign_digest", cpu_us(lambda: sign_digest(private, digest), args.rounds // 2)),
        (
            "RSA-2048: cryptography, fresh padding",
            cpu_us(lambda: private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())), args.rounds // 2),
        ),
    ]
    loop.close()
    import relay

    print(f"{Path(relay.__file__).parent.parent}: {len(RAW)}-byte bench/message.eml; CPU us per message, median; load average {os.getloadavg()[0]:.1f}")
    for name, value in rows:
        print(f"{name:<40} {value:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
