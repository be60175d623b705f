"""CPU per message of what the relay does besides I/O for the marketing stream of issue 20, in process:
the helper's verdict job and the copies, short of the RSA step (bench_dkim has that: ~0.43 ms a copy).

    .venv/bin/python -m bench.bench_copies [--rounds 1000]

Rows (CPU microseconds, thread time, median of --rounds): the loop's parse of bench/message.eml; the
helper's verdict job as the relay runs it (facts and recipient facts pickled, unpickled in the child,
Engine.message with profile strict, the verdict pickled and unpickled); the copies of one message
for 1 and 10 recipients (relay id, template, per-copy list headers and URL, DKIM preparation of all
copies, signature fields added with a stand-in b= value). Run it in two checkouts, alternating, for a
same-run ratio.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: E402

from policies.engine import Engine  # noqa: E402
from policies.facts import AccountFacts, ConsentRecord, MessageFacts, RecipientFacts, StreamFacts  # noqa: E402
from policies.message import parse_message  # noqa: E402
from policies.profiles import load_profile  # noqa: E402
from policies.registry import ALL_RULES  # noqa: E402
from relay.delivery.dkim import DkimKey, DkimSigner  # noqa: E402
from relay.delivery.personalize import prepare  # noqa: E402
from relay.engine.copies import with_relay_id  # noqa: E402
from relay.engine.pipeline import STREAM_HEADER  # noqa: E402

RAW = (ROOT / "bench" / "message.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
PLACEHOLDER = "{{unsubscribe_url}}"
ACCOUNT = AccountFacts(
    id="shop", name="Shop", domains=frozenset({"shop.example"}), legal_name="Shop B.V.",
    postal_address="Keizersgracht 1, 1015 AA Amsterdam", registration_number="12345678",
)
STREAM = StreamFacts("newsletter", "marketing", "newsletter")
NOW = datetime.now(timezone.utc)
URL = "http://127.0.0.1:8000/u/AQAAZVNQgAdhY2N0OjQyBndlZWtseWJvYkBleGFtcGxlLm9yZ7Zb3x0lq0kR8mCq2z7mTnQ"


def recipient(address: str) -> RecipientFacts:
    collected = NOW - timedelta(days=30)
    consent = ConsentRecord(
        address, "shop", "*", "double_opt_in", "signup_form", collected, "https://shop.example/nieuwsbrief",
        "192.0.2.10", collected + timedelta(minutes=5), "Ja, ik wil de nieuwsbrief.", frequency_disclosed=True,
    )
    return RecipientFacts(address, (consent,))


def list_headers(i: int) -> list[tuple[str, str]]:
    return [
        ("List-Unsubscribe", f"<{URL}{i}>, <mailto:unsubscribe+aeaqcaibaeaqcaibae{i}@relay.bench>"),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ("List-Id", "<newsletter.shop.relay.bench>"),
    ]


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
    parser = argparse.ArgumentParser(prog="python -m bench.bench_copies", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1000)
    args = parser.parse_args(argv)
    profile = load_profile("strict")
    engine = Engine(ALL_RULES, profile)
    key = DkimKey("shop.example", "bench", rsa.generate_private_key(65537, 2048), "rsa-sha256")
    signer = DkimSigner([key])

    def verdict_job(count: int) -> Callable[[], object]:
        message = parse_message(RAW)
        facts = MessageFacts(ACCOUNT, "news@shop.example", NOW, profile.params, STREAM, message=message)
        rfacts = [recipient(f"{i}rcpt@example.net") for i in range(count)]

        def job() -> object:
            _, _, job_args = pickle.loads(pickle.dumps((1, "message", (facts, rfacts)), protocol=pickle.HIGHEST_PROTOCOL))
            verdict = engine.message(*job_args)
            answer = pickle.loads(pickle.dumps((1, True, verdict), protocol=pickle.HIGHEST_PROTOCOL))
            assert answer[2].outcome.value == "deliver", answer[2].findings
            return answer

        return job

    def copies(count: int) -> Callable[[], object]:
        def make() -> object:
            raw = with_relay_id(RAW, "01JABCDEFGHJKMNPQRSTVWXYZ0", STREAM_HEADER)
            template = prepare(raw, placeholder=PLACEHOLDER)
            rendered = [template.render(headers=list_headers(i), url=f"{URL}{i}") for i in range(count)]
            prepare_all = getattr(signer, "prepare_all", None)  # the code before issue 20 prepares one by one
            jobs = prepare_all(rendered) if prepare_all else [signer.prepare(copy) for copy in rendered]
            return [job.finish([b"\x01" * 256]) for job in jobs if job is not None]

        return make

    rows = [
        ("parse_message (the loop's parse)", cpu_us(lambda: parse_message(RAW), args.rounds)),
        ("helper verdict job, 1 recipient", cpu_us(verdict_job(1), args.rounds)),
        ("helper verdict job, 10 recipients", cpu_us(verdict_job(10), args.rounds)),
        ("copies short of RSA, 1 recipient", cpu_us(copies(1), args.rounds)),
        ("copies short of RSA, 10 recipients", cpu_us(copies(10), args.rounds // 4)),
    ]
    print(f"{len(RAW)}-byte bench/message.eml; CPU us per message, median; load average {os.getloadavg()[0]:.1f}")
    for name, value in rows:
        print(f"{name:<40} {value:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
