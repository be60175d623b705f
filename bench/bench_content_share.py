"""What the content rules add to Engine.message per message, body walk included: bench/message.eml
as the relay hands it over (a ParsedMessage unpickled, its body not yet walked), profile strict with the
params the relay passes (relay.services.build_profile: an empty [policy.wordlists] table), one
recipient with a covering consent on the marketing stream, and on the transactional stream (issue 20's
goal: python -m bench relay ÷ relay-nocontent, which runs transactional); every rule, and every
rule but the content ones.

    .venv/bin/python -m bench.bench_content_share [--rounds 2000]
    .venv/bin/python -m bench.bench_content_share --against ../base [--runs 3]

With --against, the same measurement runs in that checkout (its own .venv) and in this one,
alternating, one subprocess each; the table gives each tree's median CPU µs per message and this
tree ÷ that one. "content share" is every rule minus no content rule: the words, the link hosts and
the eleven content rules (issue 20: "content rules on ÷ off").
"""

from __future__ import annotations

import pickle
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=timezone.utc)
CASES = (
    "every rule", "no content rule", "content share",
    "transactional: every rule", "transactional: no content rule", "transactional: content share",
)


def measure(rounds: int) -> dict[str, float]:
    """Median CPU µs of Engine.message per case, in the checkout whose `policies` is importable."""
    from policies.engine import Engine
    from policies.facts import AccountFacts, ConsentRecord, MessageFacts, RecipientFacts, StreamFacts
    from policies.message import parse_message
    from policies.profiles import load_profile
    from policies.registry import ALL_RULES

    raw = (ROOT / "bench" / "message.eml").read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    blob = pickle.dumps(parse_message(raw), protocol=pickle.HIGHEST_PROTOCOL)
    account = AccountFacts(
        id="shop", name="Shop", domains=frozenset({"shop.example"}), legal_name="Shop B.V.",
        postal_address="Keizersgracht 1, 1015 AA Amsterdam", registration_number="12345678",
    )
    stream = StreamFacts("newsletter", "marketing", "newsletter")
    transactional = StreamFacts("orders", "transactional", "orders")
    profile = load_profile("strict")
    # as relay.services.build_profile merges them: no site additions is an empty table, not no key
    params = {**profile.params, "placeholder": "{{unsubscribe_url}}", "wordlists": {}}
    collected = NOW - timedelta(days=30)
    rcpts = [
        RecipientFacts("r@example.net", (ConsentRecord(
            "r@example.net", "shop", "*", "double_opt_in", "signup_form", collected, "https://shop.example/nieuwsbrief",
            "192.0.2.10", collected + timedelta(minutes=5), "Ja, ik wil de nieuwsbrief.", frequency_disclosed=True,
        ),))
    ]
    engines = {
        "every rule": Engine(ALL_RULES, profile),
        "no content rule": Engine([r for r in ALL_RULES if not r.id.startswith("content.")], profile),
    }

    def once(engine: Engine, on: StreamFacts = stream) -> int:
        facts = MessageFacts(account, "news@shop.example", NOW, params, on, message=pickle.loads(blob))
        start = time.thread_time_ns()
        verdict = engine.message(facts, rcpts if on is stream else ())
        elapsed = time.thread_time_ns() - start
        assert verdict.outcome.value == "deliver", verdict.findings
        return elapsed

    runs = {(name, on): f"{'transactional: ' if on is transactional else ''}{name}" for name in engines for on in (stream, transactional)}
    samples: dict[str, list[int]] = {case: [] for case in runs.values()}
    for (name, on) in runs:
        for _ in range(50):
            once(engines[name], on)  # warm caches (word lists, regexes)
    for _ in range(rounds):  # round-robin, so a slow spell falls on every case
        for (name, on), case in runs.items():
            samples[case].append(once(engines[name], on))
    result = {case: statistics.median(values) / 1000 for case, values in samples.items()}
    for prefix in ("", "transactional: "):
        result[f"{prefix}content share"] = result[f"{prefix}every rule"] - result[f"{prefix}no content rule"]
    return result


def main(argv: list[str] | None = None) -> int:
    from bench import alternate  # only here: measure() runs in the other checkout, whose bench/ may lack it

    return alternate.main("bench_content_share", __doc__, CASES, measure, argv)


if __name__ == "__main__":
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sys.exit(main())
