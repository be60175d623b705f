"""Policy evaluation cost: parse + every session and message rule (profile strict) per message.

    .venv/bin/python bench/bench_policy.py [--rounds 300] [--big-mb 20] [--count N]

Targets (issue 4): a 5 KB marketing mail well under 1 ms; a 100 KB HTML newsletter
<= 2 ms median; a 20 MB message with attachments peaks at <= 3x its size (tracemalloc), and so
does a message of zip bombs (archives inflate to at most ARCHIVE_EXPANSION x the message).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gc
import io
import os
import random
import statistics
import sys
import time
import tomllib
import tracemalloc
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ is on sys.path, the repository is not
    sys.path.insert(0, str(ROOT))

import policies._passes_py  # noqa: E402
import policies.message  # noqa: E402
import policies.rules.content  # noqa: E402
from policies.engine import Engine  # noqa: E402
from policies.facts import AccountFacts, MessageFacts, StreamFacts  # noqa: E402
from policies.message import parse_message  # noqa: E402
from policies.profiles import load_profile  # noqa: E402
from policies.registry import ALL_RULES  # noqa: E402

CORPUS = ROOT / "tests" / "corpus"
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
STREAM = StreamFacts("newsletter", "marketing", "newsletter")
SHOP = AccountFacts(
    id="shop",
    name="Shop",
    domains=frozenset({"shop.example"}),
    legal_name="Shop B.V.",
    postal_address="Keizersgracht 1, 1015 AA Amsterdam",
    registration_number="12345678",
)


def accounts() -> list[AccountFacts]:
    data = tomllib.loads((CORPUS / "accounts.toml").read_text("utf-8"))
    return [
        AccountFacts(
            id=a["id"],
            name=a["name"],
            domains=frozenset(a["domains"]),
            legal_name=a["legal_name"],
            postal_address=a["postal_address"],
            registration_number=a["registration_number"],
        )
        for a in data["accounts"]
    ]


def account_for(raw: bytes, known: list[AccountFacts]) -> AccountFacts:
    sender = parse_message(raw).from_addresses[0]
    return next(a for a in known if sender.rpartition("@")[2] in a.domains)


def evaluate(
    engine: Engine, account: AccountFacts, raw: bytes, params: dict[str, object], *, clean: bool = True
) -> None:
    """What the relay does at end of DATA: parse once, then every rule through the engine."""
    message = parse_message(raw)
    facts = MessageFacts(account, "news@" + next(iter(account.domains)), NOW, params, STREAM, message=message)
    verdict = engine.message(facts, ())
    if clean:
        assert not verdict.findings, verdict.findings


def timings(
    engine: Engine, account: AccountFacts, raw: bytes, params: dict[str, object], rounds: int
) -> tuple[list[float], list[float]]:
    """Wall-clock and CPU milliseconds per evaluation (CPU time shows the cost on a busy machine)."""
    evaluate(engine, account, raw, params)  # warm caches (word lists, regexes)
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter_ns(), time.thread_time_ns()
        evaluate(engine, account, raw, params)
        wall.append((time.perf_counter_ns() - start) / 1e6)
        cpu.append((time.thread_time_ns() - start_cpu) / 1e6)
    return wall, cpu


def newsletter(target: int = 100 * 1024) -> bytes:
    """A table-layout HTML newsletter of about `target` bytes, quoted-printable, with a plain part."""
    rng = random.Random(4)
    words = (
        "zomer jurk linnen sandalen korting collectie nieuw duurzaam katoen blauw wit maat bestel "
        "gratis verzending vandaag binnen dagen kleur model stof zacht luchtig"
    ).split()
    products = []
    i = 0
    while sum(len(p) for p in products) < target - 4000:
        name = " ".join(rng.choice(words) for _ in range(3)).capitalize()
        blurb = " ".join(rng.choice(words) for _ in range(30))
        products.append(
            f'<tr><td class="product" style="padding:12px 24px;font-family:Arial,Helvetica,sans-serif;'
            f'font-size:14px;line-height:20px;color:#333333">'
            f'<a href="https://shop.example/p/{i}?utm_source=nieuwsbrief&amp;utm_medium=email&amp;utm_campaign=w11">'
            f'<img src="https://cdn.shop.example/p/{i}.jpg" alt="{name}" width="160" style="display:block;border:0"></a>'
            f"<h3 style=\"margin:8px 0\">{name}</h3><p>{blurb} &ndash; nu &euro;&nbsp;{rng.randint(10, 99)},95</p>"
            f'<a href="https://shop.example/p/{i}?utm_source=nieuwsbrief" style="color:#e30">Bekijk &rarr;</a></td></tr>\n'
        )
        i += 1
    html = (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Nieuwsbrief</title>"
        "<style>td{font-family:Arial} .btn{background:#e30}</style></head><body>"
        '<div style="display:none;max-height:0">Tot 40% korting op de zomercollectie</div>'
        '<table role="presentation" width="600" align="center">'
        + "".join(products)
        + '<tr><td style="font-size:11px;color:#777">Shop B.V. &middot; Keizersgracht 1 &middot; 1015 AA Amsterdam'
        '<br>KvK 12345678 &middot; <a href="{{unsubscribe_url}}">Afmelden</a></td></tr></table></body></html>'
    )
    text = "De zomercollectie is binnen.\n\nShop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\nAfmelden: {{unsubscribe_url}}\n"
    import quopri

    return (
        b"From: Shop <news@shop.example>\r\nTo: anna@example.nl\r\nSubject: De zomercollectie is binnen\r\n"
        b"Date: Sun, 15 Mar 2026 12:00:00 +0100\r\nMessage-ID: <nl@shop.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n--alt\r\n'
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + quopri.encodestring(text.encode())
        + b"\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        + quopri.encodestring(html.encode())
        + b"\r\n--alt--\r\n"
    )


def big_message(megabytes: int) -> bytes:
    """A marketing mail with a large PDF-like attachment and a zip of images: about `megabytes` MB."""
    rng = random.Random(7)
    attachment_bytes = int(megabytes * 1024 * 1024 * 0.75 / 2)  # base64 grows by 4/3; two attachments
    pdf = b"%PDF-1.7\n" + rng.randbytes(attachment_bytes)
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for n in range(8):
            z.writestr(f"fotos/foto-{n}.jpg", b"\xff\xd8\xff\xe0" + rng.randbytes(attachment_bytes // 8))
    def b64(data: bytes) -> bytes:
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (
        b"From: Shop <news@shop.example>\r\nTo: anna@example.nl\r\nSubject: De catalogus\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        b"De catalogus zit in de bijlage.\r\nShop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\r\n"
        b"Afmelden: {{unsubscribe_url}}\r\n--mix\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="catalogus.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + b64(pdf)
        + b"--mix\r\nContent-Type: application/zip\r\n"
        b'Content-Disposition: attachment; filename="fotos.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
        + b64(archive.getvalue())
        + b"--mix--\r\n"
    )


def zip_bombs(count: int = 10, inflated_mb: int = 80) -> bytes:
    """`count` copies of one zip that inflates to `inflated_mb` MB of zeros (about 1,000:1)."""
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("zeros.bin", b"\0" * (inflated_mb * 1024 * 1024))
    bomb = base64.encodebytes(archive.getvalue()).replace(b"\n", b"\r\n")
    parts = b"".join(
        b"--mix\r\nContent-Type: application/zip\r\n"
        b'Content-Disposition: attachment; filename="bomb%d.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n' % n
        + bomb
        for n in range(count)
    )
    return (
        b"From: Shop <news@shop.example>\r\nTo: anna@example.nl\r\nSubject: De catalogus\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n'
        b"De catalogus zit in de bijlage.\r\nShop B.V., Keizersgracht 1, 1015 AA Amsterdam, KvK 12345678\r\n"
        b"Afmelden: {{unsubscribe_url}}\r\n" + parts + b"--mix--\r\n"
    )


def peak_memory(engine: Engine, raw: bytes, params: dict[str, object], *, clean: bool = True) -> int:
    """tracemalloc peak of parse + evaluation, the raw message itself not counted (the relay holds it anyway)."""
    gc.collect()
    tracemalloc.start()
    evaluate(engine, SHOP, raw, params, clean=clean)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


@contextlib.contextmanager
def passes_swapped(shim: Any) -> Iterator[None]:
    """policies' text passes (the C module or its fallback, as policies._passes chose) swapped for
    `shim`, a module or object with the same functions, in every core module that calls them."""
    users = (policies.message, policies.rules.content)
    kept = [module._speedups for module in users]
    for module in users:
        module._speedups = shim  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, original in zip(users, kept):
            module._speedups = original


def python_passes() -> contextlib.AbstractContextManager[None]:
    """policies' C passes (policies/_speedups.c) swapped for the pure-Python passes they replaced,
    the runtime fallback policies/_passes_py.py: the same-run baseline."""
    return passes_swapped(policies._passes_py)


def interleaved(
    engine: Engine, account: AccountFacts, raw: bytes, params: dict[str, object], rounds: int
) -> tuple[list[float], list[float]]:
    """CPU milliseconds per evaluation with the C passes and with the Python ones, alternating
    round by round, so that the machine's changes of speed fall on both alike."""
    with python_passes():
        evaluate(engine, account, raw, params)
    evaluate(engine, account, raw, params)
    fast, slow = [], []
    for _ in range(rounds):
        start = time.thread_time_ns()
        evaluate(engine, account, raw, params)
        fast.append((time.thread_time_ns() - start) / 1e6)
        with python_passes():
            start = time.thread_time_ns()
            evaluate(engine, account, raw, params)
            slow.append((time.thread_time_ns() - start) / 1e6)
    return fast, slow


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--big-mb", type=int, default=20)
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="only evaluate the newsletter N times and stop: run under valgrind --tool=callgrind with N and 0, "
        "the difference / N is its instructions per evaluation (repeatable on a noisy machine)",
    )
    args = parser.parse_args()

    profile = load_profile("strict")
    engine = Engine(ALL_RULES, profile)
    params = dict(profile.params)
    if args.count is not None:
        letter = newsletter()
        evaluate(engine, SHOP, letter, params)
        for _ in range(args.count):
            evaluate(engine, SHOP, letter, params)
        return 0
    known = accounts()
    rows: list[tuple[str, int, tuple[list[float], list[float]]]] = []

    corpus_wall: list[float] = []
    corpus_cpu: list[float] = []
    for path in sorted(CORPUS.glob("clean-*.eml")):
        raw = path.read_bytes()
        wall, cpu = timings(engine, account_for(raw, known), raw, params, args.rounds)
        corpus_wall += wall
        corpus_cpu += cpu
        rows.append((path.name, len(raw), (wall, cpu)))
    rows.append(("clean corpus (all)", 0, (corpus_wall, corpus_cpu)))
    letter = newsletter()
    rows.append(("generated HTML newsletter", len(letter), timings(engine, SHOP, letter, params, args.rounds)))

    load = os.getloadavg()[0]
    print(
        f"policy evaluation (parse + {len(ALL_RULES)} rules, profile strict), {args.rounds} rounds each; "
        f"{os.cpu_count()} CPUs, load average {load:.1f}"
    )
    print(f"{'message':<36} {'bytes':>8} {'median ms':>10} {'p99 ms':>8} {'cpu median':>11} {'cpu p99':>8}")
    for name, size, (wall, cpu) in rows:
        print(
            f"{name:<36} {size or '':>8} {statistics.median(wall):>10.3f} {p99(wall):>8.3f} "
            f"{statistics.median(cpu):>11.3f} {p99(cpu):>8.3f}"
        )

    print("\nC passes vs the pure-Python passes they replaced, same run, rounds alternating (CPU ms):")
    print(f"{'message':<36} {'C median':>10} {'Python median':>14} {'C / Python':>11}")
    fast_all: list[float] = []
    slow_all: list[float] = []
    for raw in (path.read_bytes() for path in sorted(CORPUS.glob("clean-*.eml"))):
        account = account_for(raw, known)
        fast, slow = interleaved(engine, account, raw, params, max(20, args.rounds // 3))
        fast_all += fast
        slow_all += slow
    fast_letter, slow_letter = interleaved(engine, SHOP, letter, params, args.rounds)
    for name, fast, slow in (("clean corpus (all)", fast_all, slow_all), ("generated HTML newsletter", fast_letter, slow_letter)):
        c, py = statistics.median(fast), statistics.median(slow)
        print(f"{name:<36} {c:>10.3f} {py:>14.3f} {c / py:>10.2f}x")

    big = big_message(args.big_mb)
    start = time.perf_counter()
    peak = peak_memory(engine, big, params)
    elapsed = time.perf_counter() - start
    print(
        f"\n{len(big) / 1e6:.1f} MB message with attachments: peak {peak / 1e6:.1f} MB "
        f"= {peak / len(big):.2f}x its size (target <= 3x), {elapsed * 1000:.0f} ms under tracemalloc"
    )
    bombs = zip_bombs()
    start = time.perf_counter()
    peak = peak_memory(engine, bombs, params, clean=False)
    elapsed = time.perf_counter() - start
    print(
        f"{len(bombs) / 1e6:.1f} MB message of 10 zip bombs (800 MB inflated): peak {peak / 1e6:.1f} MB "
        f"= {peak / len(bombs):.2f}x its size (target <= 3x), {elapsed * 1000:.0f} ms under tracemalloc"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
