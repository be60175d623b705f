"""DKIM signing cost per copy: relay.delivery.dkim (cryptography) against dkimpy's dkim.sign.

`python -m bench.bench_dkim [--count 2000] [--dkimpy-count 1000]` prints median and
p99 per signature of a ~5 KB marketing message, plus the whole per-copy step
(personalize + sign), and checks one signed copy with Mail::DKIM.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from relay.delivery.dkim import DkimKey, DkimSigner, dkim_dns_record, load_dkim_key
from relay.delivery.personalize import personalize, prepare
from relay.engine.helper import Helper
from relay.engine.signing import CopySigner

TARGET_MS = 1.0
VERIFIER = Path(__file__).resolve().parent.parent / "tests" / "relay" / "dkim_verify.pl"
PLACEHOLDER = "{{unsubscribe_url}}"
URL = "https://relay.example.com/u/AQAAZVNQgAdhY2N0OjQyBndlZWtseWJvYkBleGFtcGxlLm9yZ7Zb3x0lq0kR8mCq2z7mTnQ"
LIST_HEADERS = [
    ("List-Unsubscribe", f"<{URL}>, <mailto:unsubscribe+aeaqcaibaeaqcaibaeaqcaibaeaqcaibae@relay.example.com>"),
    ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
    ("List-Id", "<weekly.acct42.relay.example.com>"),
]


def message() -> bytes:
    head = (
        b"From: Shop <news@shop.example>\r\n"
        b"To: Bob <bob@example.org>\r\n"
        b"Subject: Deze week in de aanbieding\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        b"Message-ID: <bench-1@shop.example>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 7bit\r\n"
    )
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * 68 + b"Afmelden: " + PLACEHOLDER.encode() + b"\r\n"
    return head + b"\r\n" + body


def timings(fn: Callable[[], object], count: int) -> list[float]:
    for _ in range(min(50, count)):
        fn()  # warm-up: caches, lazy imports, OpenSSL blinding setup
    out = []
    for _ in range(count):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


async def helper_batches(signer: DkimSigner, key: DkimKey, copy: bytes, batches: int) -> tuple[list[float], list[float]]:
    """What a marketing message of 10 copies costs the relay with the helper process: the loop
    prepares the digests and waits; the RSA steps run in the helper (another core)."""
    helper = Helper({"dkim_keys": [key.pem()]})
    await helper.start()
    copy_signer = CopySigner(signer, helper_now=lambda: helper)  # always, as under concurrency
    copies = [copy] * 10
    try:
        for _ in range(20):
            await copy_signer.sign(copies)  # warm-up: the child's imports and first signatures
        wall, cpu = [], []
        for _ in range(batches):
            t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            signed = await copy_signer.sign(copies)
            wall.append((time.perf_counter_ns() - t0) / 1e6 / len(copies))
            cpu.append((time.thread_time_ns() - c0) / 1e6 / len(copies))
        assert signed[0] == signer.sign(copy, now=int(signed[0].split(b"t=", 1)[1].split(b";", 1)[0]))
    finally:
        await helper.close()
    return wall, cpu


def row(name: str, samples: list[float]) -> str:
    samples = sorted(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return f"{name:<44} {len(samples):>6} {statistics.median(samples):>10.3f} {p99:>10.3f}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dkim", description=__doc__)
    parser.add_argument("--count", type=int, default=2000, help="signatures per relay.delivery.dkim row")
    parser.add_argument("--dkimpy-count", type=int, default=1000, help="signatures for the dkimpy row")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        keys: dict[str, DkimKey] = {}
        for name, private in (
            ("rsa", rsa.generate_private_key(65537, 2048)),
            ("ed", ed25519.Ed25519PrivateKey.generate()),
        ):
            path = Path(tmp) / f"{name}.pem"
            path.write_bytes(
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            keys[name] = load_dkim_key("shop.example", f"{name}2024", path)
        rsa_pem = (Path(tmp) / "rsa.pem").read_bytes()

        copy = personalize(message(), headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
        rsa_signer = DkimSigner([keys["rsa"]])
        ed_signer = DkimSigner([keys["ed"]])
        both = DkimSigner([keys["rsa"], keys["ed"]])
        template = prepare(message(), placeholder=PLACEHOLDER)
        include = [h.encode() for h in (
            "from", "to", "subject", "date", "message-id", "mime-version", "content-type",
            "content-transfer-encoding", "list-id", "list-unsubscribe", "list-unsubscribe-post",
        )]

        rsa_private = keys["rsa"].private_key
        assert isinstance(rsa_private, rsa.RSAPrivateKey)
        rows = [
            row(
                "floor: one RSA-2048 operation (cryptography)",
                timings(lambda: rsa_private.sign(copy[:600], padding.PKCS1v15(), hashes.SHA256()), args.count),
            ),
            row("relay.delivery.dkim RSA-2048", timings(lambda: rsa_signer.sign(copy), args.count)),
            row("relay.delivery.dkim Ed25519", timings(lambda: ed_signer.sign(copy), args.count)),
            row("relay.delivery.dkim RSA-2048 + Ed25519", timings(lambda: both.sign(copy), args.count)),
            row(
                "personalize + RSA-2048 sign (whole copy)",
                timings(
                    lambda: rsa_signer.sign(
                        personalize(message_bytes, headers=LIST_HEADERS, placeholder=PLACEHOLDER, url=URL)
                    ),
                    args.count,
                ),
            ),
            row(
                "prepared template render + RSA-2048 sign",
                timings(lambda: rsa_signer.sign(template.render(headers=LIST_HEADERS, url=URL)), args.count),
            ),
            row(
                "dkimpy dkim.sign RSA-2048 (pure Python)",
                timings(
                    lambda: dkimpy.sign(
                        copy, b"rsa2024", b"shop.example", rsa_pem,
                        canonicalize=(b"relaxed", b"relaxed"), include_headers=include,
                    ),
                    args.dkimpy_count,
                ),
            ),
        ]

        wall, loop_cpu = asyncio.run(helper_batches(rsa_signer, keys["rsa"], copy, args.count // 10))
        rows.append(row("helper: RSA-2048, batch of 10, wall per copy", wall))
        rows.append(row("helper: same, event-loop CPU per copy", loop_cpu))

        print(f"message {len(copy)} bytes after personalisation; times in ms per signed copy")
        print(f"{'':<44} {'n':>6} {'median':>10} {'p99':>10}")
        for line in rows:
            print(line)

        signed = both.sign(copy)
        records = Path(tmp) / "keys.txt"
        records.write_text(
            "".join(f"{k.selector}._domainkey.{k.domain} {dkim_dns_record(k)}\n" for k in keys.values())
        )
        verdict = subprocess.run(
            ["perl", str(VERIFIER), str(records)], input=signed, capture_output=True, check=False
        )
        print("Mail::DKIM on a signed copy:", " | ".join(verdict.stdout.decode().splitlines()) or verdict.stderr.decode())
        rsa_median = statistics.median(timings(lambda: rsa_signer.sign(copy), 200))
        ok = rsa_median <= TARGET_MS and "overall pass" in verdict.stdout.decode()
        print(f"target RSA-2048 <= {TARGET_MS} ms per copy and verified: {'met' if ok else 'NOT met'}")
        return 0 if ok else 1


message_bytes = message()

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
