"""`python -m bench`: the throughput table of issue 2 (see bench/throughput.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.throughput import ALL_TARGETS, DEFAULT_TARGETS, OUT_DIR, POSTGRES_URL, Options, command_line, main


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("need at least one positive integer")
    return values


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [n for n in names if n not in ALL_TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown}; choose from {','.join(ALL_TARGETS)}")
    return names


def parse(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--messages", type=int, help="messages per row (default 5000, --quick 500)")
    parser.add_argument("--quick", action="store_true", help="500 messages per row")
    parser.add_argument("--concurrency", type=_ints, default=(1, 10, 50), help="smtp-source sessions, e.g. 1,10,50")
    parser.add_argument("--recipients", type=_ints, default=(1, 10), help="recipients per message, e.g. 1,10")
    parser.add_argument(
        "--targets", type=_targets, default=DEFAULT_TARGETS,
        help=f"default {','.join(DEFAULT_TARGETS)}; all: {','.join(ALL_TARGETS)}; "
        "a target listed again runs again, on its own (relay,relay-webhooks,relay,relay-webhooks: alternating pairs)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured messages per target first (0: none)")
    parser.add_argument(
        "--consent",
        nargs="?",
        const="generate",
        metavar="CSV",
        help="relay targets: make the stream marketing and import consent for account shop first "
        "(generated double opt-in records for the smtp-source recipients, or this CSV)",
    )
    parser.add_argument(
        "--postgres", metavar="URL", default=POSTGRES_URL,
        help=f"relay-pg, relay-pg2: the PostgreSQL database for their fresh schemas (default {POSTGRES_URL})",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs, stores)")
    parser.add_argument("--out", type=Path, default=OUT_DIR / "throughput.md", help="where the table is written")
    args = parser.parse_args(argv)
    messages = args.messages or (500 if args.quick else 5000)
    if messages < 1:
        parser.error("--messages must be positive")
    return Options(
        messages=messages,
        concurrency=args.concurrency,
        rcpts=args.recipients,
        targets=args.targets,
        warmup=max(0, args.warmup),
        consent=args.consent is not None,
        consent_csv=Path(args.consent).resolve() if args.consent not in (None, "generate") else None,
        postgres_url=args.postgres,
        keep=args.keep,
        out=args.out,
        command=command_line(argv),
    )


if __name__ == "__main__":
    try:
        sys.exit(main(parse(sys.argv[1:])))
    except KeyboardInterrupt:
        sys.exit(130)
