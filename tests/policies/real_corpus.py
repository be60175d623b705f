"""The real-world corpus (tests/corpus/real): every sample through every rule, as `explain` runs them.

Legitimate mails run as they were sent, for an account that matches their sender
(tests/corpus/real/accounts.toml) on the stream kind of verdicts.toml; a hit that verdicts.toml does not
expect (with its reason) is a false positive. Spam and phishing run with a realistic footer pasted in:
sent from the test account's address, with its legal name, postal address, KvK number and an
unsubscribe link, so that only what the message itself does can block it.

    .venv/bin/python tests/policies/real_corpus.py            # print the table
    .venv/bin/python tests/policies/real_corpus.py --write    # and write docs/corpus-results.md
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from factories import FOOTER_HTML, FOOTER_TEXT, NOW, SHOP
from policies.engine import Engine
from policies.facts import AccountFacts, MessageFacts, StreamFacts
from policies.findings import Outcome, Verdict
from policies.message import parse_message
from policies.profiles import load_profile
from policies.registry import ALL_RULES

REAL = Path(__file__).resolve().parents[1] / "corpus" / "real"
RESULTS = Path(__file__).resolve().parents[2] / "docs" / "corpus-results.md"
PROFILE = "strict"
STREAMS = {
    "marketing": StreamFacts("newsletter", "marketing", "newsletter"),
    "transactional": StreamFacts("orders", "transactional", "orders"),
}
SPAM_SENDER = f'"{SHOP.name}" <news@{sorted(SHOP.domains)[0]}>'


@dataclass(frozen=True)
class Sample:
    path: Path
    kind: str  # legit | spam
    lang: str
    reason: str
    account: AccountFacts
    stream: StreamFacts
    expect: frozenset[str] = frozenset()


@dataclass
class Result:
    sample: Sample
    verdict: Verdict
    hits: tuple[str, ...] = field(default_factory=tuple)

    @property
    def false_positives(self) -> tuple[str, ...]:
        return tuple(r for r in self.hits if r not in self.sample.expect)

    @property
    def blocked(self) -> bool:
        return self.verdict.outcome is not Outcome.DELIVER


def load_accounts() -> dict[str, AccountFacts]:
    data = tomllib.loads((REAL / "accounts.toml").read_text("utf-8"))
    return {
        entry["id"]: AccountFacts(
            id=entry["id"],
            name=entry.get("name", ""),
            domains=frozenset(entry.get("domains", ())),
            legal_name=entry.get("legal_name", ""),
            postal_address=entry.get("postal_address", ""),
            registration_number=entry.get("registration_number", ""),
            own_ibans=frozenset(entry.get("own_ibans", ())),
            tracking_hosts=frozenset(entry.get("tracking_hosts", ())),
        )
        for entry in data["accounts"]
    }


def load_samples() -> list[Sample]:
    data = tomllib.loads((REAL / "verdicts.toml").read_text("utf-8"))
    accounts = load_accounts()
    samples = []
    for kind in ("legit", "spam"):
        for entry in data[kind]:
            samples.append(
                Sample(
                    path=REAL / kind / entry["file"],
                    kind=kind,
                    lang=entry["lang"],
                    reason=entry["reason"],
                    account=accounts[entry["account"]] if kind == "legit" else SHOP,
                    stream=STREAMS[entry.get("stream", "marketing")],
                    expect=frozenset(entry.get("expect", ())),
                )
            )
    return samples


def _with_footer(text: str, html: bool) -> str:
    if not html:
        return f"{text}\n\n{FOOTER_TEXT}\nAfmelden: {{{{unsubscribe_url}}}}\n"
    close = re.search(r"</body\s*>", text, re.I)
    at = close.start() if close else len(text)
    return text[:at] + FOOTER_HTML + text[at:]


def paste_footer(raw: bytes) -> bytes:
    """The spam as the test account would send it: its From address, footer and unsubscribe link
    added to every text part (re-encoded as UTF-8 base64), nothing else changed."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    touched = False
    for part in message.walk():
        if part.is_multipart() or part.get_content_type() not in ("text/plain", "text/html"):
            continue
        if part.get_filename() or (part.get("Content-Disposition") or "").lower().startswith("attachment"):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        try:
            text = data.decode(part.get_content_charset() or "utf-8", "replace")
        except LookupError:
            text = data.decode("utf-8", "replace")
        _set_text(part, _with_footer(text, part.get_content_type() == "text/html"))
        touched = True
    if not touched and not message.is_multipart():
        # no text part found (a multipart whose delimiters are broken, a bare non-text type): the
        # body is kept as it was written, as text, and the footer follows it
        payload = message.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        _set_text(message, _with_footer(data.decode("latin-1"), False))
    del message["From"]
    message["From"] = SPAM_SENDER
    return message.as_bytes()


def _set_text(part: Message, text: str) -> None:
    del part["Content-Transfer-Encoding"]
    part.set_payload(base64.encodebytes(text.encode("utf-8")).decode("ascii"))
    part["Content-Transfer-Encoding"] = "base64"
    if part.get_content_type() not in ("text/plain", "text/html"):
        part.set_type("text/plain")
    part.set_param("charset", "utf-8")


def evaluate(sample: Sample, profile: str = PROFILE) -> Result:
    raw = sample.path.read_bytes()
    if sample.kind == "spam":
        raw = paste_footer(raw)
    message = parse_message(raw)
    mail_from = message.from_addresses[0] if message.from_addresses else ""
    facts = MessageFacts(
        account=sample.account,
        mail_from=mail_from,
        now=NOW,
        params=load_profile(profile).params,
        stream=sample.stream,
        message=message,
    )
    verdict = Engine(ALL_RULES, load_profile(profile)).message(facts, ())
    return Result(sample, verdict, tuple(dict.fromkeys(verdict.rule_ids)))


def run(samples: list[Sample] | None = None) -> list[Result]:
    return [evaluate(s) for s in (samples if samples is not None else load_samples())]


def table(results: list[Result]) -> str:
    legit = [r for r in results if r.sample.kind == "legit"]
    spam = [r for r in results if r.sample.kind == "spam"]
    fp: Counter[str] = Counter(rule for r in legit for rule in r.false_positives)
    expected: Counter[str] = Counter(rule for r in legit for rule in r.hits if rule in r.sample.expect)
    caught: Counter[str] = Counter(rule for r in spam for rule in r.hits)
    recall = sum(r.blocked for r in spam) / len(spam) if spam else 0.0
    langs = sorted({r.sample.lang for r in legit})
    lines = [
        "# Real-world corpus: false positives and recall",
        "",
        "Produced by `.venv/bin/python tests/policies/real_corpus.py --write` (profile `strict`); the",
        "standing test is `tests/policies/test_real_corpus.py`. Samples, origins and licences:",
        "`tests/corpus/real/` (`SOURCES`, `verdicts.toml`, `accounts.toml`).",
        "",
        f"- legitimate newsletters and transactional mails: {len(legit)} in {len(langs)} languages"
        f" ({', '.join(langs)}), sent as they were, for an account matching their sender;",
        f"- spam and phishing: {len(spam)}, each with the test account's From address, footer (legal name,"
        " postal address, KvK number) and unsubscribe link pasted in.",
        "",
        "A hit on a legitimate mail that `verdicts.toml` expects (with the reason a careful reader gives,",
        "e.g. a US sender that shows no registration number) is a true positive; any other hit is a",
        "false positive.",
        "",
        "| rule | false positives (legit) | expected hits (legit) | spam hit |",
        "|---|---|---|---|",
    ]
    for rule in ALL_RULES:
        if rule.id in fp or rule.id in expected or rule.id in caught:
            lines.append(f"| `{rule.id}` | {fp[rule.id]} | {expected[rule.id]} | {caught[rule.id]} / {len(spam)} |")
    lines += [
        f"| **total** | **{sum(fp.values())}** on {sum(1 for r in legit if r.false_positives)} of {len(legit)} mails"
        f" | {sum(expected.values())} | recall **{recall:.2f}** ({sum(r.blocked for r in spam)} of {len(spam)} held or refused) |",
        "",
        "## Spam and phishing not caught",
        "",
    ]
    missed = [r for r in spam if not r.blocked]
    lines += [f"- `{r.sample.path.name}` ({r.sample.lang}): {r.sample.reason}" for r in missed] or ["- none"]
    lines += ["", "## False positives", ""]
    lines += [
        f"- `{r.sample.path.name}`: {', '.join(r.false_positives)}" for r in legit if r.false_positives
    ] or ["- none"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    output = table(run())
    print(output, end="")
    if "--write" in argv:
        RESULTS.write_text(output, "utf-8")
        print(f"written to {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

