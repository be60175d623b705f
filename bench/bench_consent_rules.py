"""End-of-DATA policy cost per marketing message with consents: Engine.message, every rule (strict),
to 1 and to 10 recipients with two covering consents each (the account's own, topic-specific,
and the parent's for '*'), and the consent rules alone.

    .venv/bin/python -m bench.bench_consent_rules [--rounds 2000]
    .venv/bin/python -m bench.bench_consent_rules --against ../consentfast-base [--runs 3]

With --against, the same measurement runs in that checkout (its own .venv) and in this one,
alternating, one subprocess each, so the machine's changes of speed fall on both alike; the table
gives each tree's median CPU µs per message and this tree ÷ that one (issue 20: the consent rules
pick the consent once per recipient).
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
ROOT = Path(__file__).resolve().parent.parent
CASES = ("all rules, 1 rcpt", "all rules, 10 rcpts", "consent rules, 1 rcpt", "consent rules, 10 rcpts")


def message() -> bytes:
    return (ROOT / "bench" / "message.eml").read_bytes()


def measure(rounds: int) -> dict[str, float]:
    """Median CPU µs of one Engine.message per case, in the checkout whose `policies` is importable."""
    from policies.engine import Engine
    from policies.facts import AccountFacts, ConsentRecord, MessageFacts, RecipientFacts, StreamFacts
    from policies.message import parse_message
    from policies.profiles import load_profile
    from policies.registry import ALL_RULES
    from policies.rules import consent

    raw = message()
    parsed = parse_message(raw)
    sender = parsed.from_addresses[0]
    domain = sender.rpartition("@")[2]
    account = AccountFacts(
        id="shop", name="Shop", parent="holding", domains=frozenset({domain}), legal_name="Shop B.V.",
        postal_address="Keizersgracht 1, 1015 AA Amsterdam", registration_number="12345678",
    )
    stream = StreamFacts("newsletter", "marketing", "newsletter")
    profile = load_profile("strict")

    def consents(address: str, n: int) -> tuple[ConsentRecord, ...]:
        documented = dict(
            email=address, basis="double_opt_in", source="signup_form", collected_at=NOW - timedelta(days=40 + n),
            confirmed_at=NOW - timedelta(days=40 + n), source_url="https://shop.example/signup",
            source_ip="198.51.100.4", statement_text="Ja, stuur mij elke vrijdag de nieuwsbrief",
            frequency_disclosed=True,
        )
        return (
            ConsentRecord(scope="holding", topic="*", id=f"p{n}", **documented),  # type: ignore[arg-type]
            ConsentRecord(scope="shop", topic="newsletter", id=f"s{n}", **documented),  # type: ignore[arg-type]
        )

    def recipients(count: int) -> list[RecipientFacts]:
        return [RecipientFacts(f"r{n}@example.nl", consents(f"r{n}@example.nl", n)) for n in range(count)]

    engines = {"all rules": Engine(ALL_RULES, profile), "consent rules": Engine(consent.RULES, profile)}
    cases = {
        f"{name}, {count} rcpt{'s' if count > 1 else ''}": (engine, count)
        for name, engine in engines.items()
        for count in (1, 10)
    }

    def once(engine: Engine, count: int) -> int:
        # What the relay does at end of DATA: fresh facts per message (the parse is not counted).
        facts = MessageFacts(account, sender, NOW, profile.params, stream, message=parsed)
        rcpts = recipients(count)
        start = time.thread_time_ns()
        verdict = engine.message(facts, rcpts)
        elapsed = time.thread_time_ns() - start
        assert not [f for f in verdict.findings if f.rule.startswith(("consent.", "suppression."))], verdict.findings
        assert len(verdict.relied_on) == count and all(r.scope == "shop" for r in verdict.relied_on.values())
        return elapsed

    samples: dict[str, list[int]] = {case: [] for case in cases}
    for engine, count in cases.values():
        once(engine, count)  # warm caches (word lists, regexes)
    for _ in range(rounds):  # round-robin over the cases, so a slow spell falls on all of them
        for case, (engine, count) in cases.items():
            samples[case].append(once(engine, count))
    return {case: statistics.median(values) / 1000 for case, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    from bench import alternate  # only here: measure() runs in the other checkout, whose bench/ may lack it

    return alternate.main("bench_consent_rules", __doc__, CASES, measure, argv)


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
