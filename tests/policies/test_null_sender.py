"""identity.null_sender (docs/SPEC.md §15): a bounce from an account's own MTA goes back to that account's
domains only, and the identity rules of the account's own mail do not apply to it."""

from __future__ import annotations

from dataclasses import replace

from factories import ORDERS, SHOP, evaluate, facts
from policies.engine import Engine
from policies.facts import RecipientFacts
from policies.findings import Action, Outcome
from policies.profiles import load_profile
from policies.registry import ALL_RULES
from policies.rules.identity import null_sender

# A bounce as Postfix writes it: From MAILER-DAEMON at the application's host, no footer, no name.
POSTFIX_BOUNCE = (
    b"From: MAILER-DAEMON@app-host.internal (Mail Delivery System)\r\n"
    b"To: orders@shop.example\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Date: Sun, 15 Mar 2026 12:00:00 +0000\r\n"
    b"Message-ID: <20260315120000.1@app-host.internal>\r\n"
    b"Auto-Submitted: auto-replied\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain\r\n\r\n"
    b"I'm sorry to have to inform you that your message could not be delivered.\r\n"
)


def _bounce_facts() -> object:
    return replace(facts(POSTFIX_BOUNCE, stream=ORDERS, mail_from=""), null_sender=True)


def test_null_sender_to_an_outside_domain_is_refused() -> None:
    # policy: platform — identity.null_sender: a bounce may only go back to the account's own domains
    hit = null_sender.check(_bounce_facts(), RecipientFacts("anna@example.nl"))
    assert hit is not None and hit.evidence == "example.nl"
    verdict = Engine(ALL_RULES, load_profile("strict")).recipient(_bounce_facts(), RecipientFacts("anna@example.nl"), before_data=True)
    assert verdict.outcome is Outcome.REJECT and verdict.deciding is not None
    assert verdict.deciding.rule == "identity.null_sender" and verdict.deciding.action is Action.REJECT


def test_null_sender_to_the_accounts_own_domain_passes() -> None:
    # policy: platform — identity.null_sender; domains compare case-insensitively
    assert null_sender.check(_bounce_facts(), RecipientFacts("orders@shop.example")) is None
    assert null_sender.check(_bounce_facts(), RecipientFacts("Orders@SHOP.example")) is None


def test_an_ordinary_sender_is_not_a_null_sender() -> None:
    # policy: platform — identity.null_sender looks only at bounces
    assert null_sender.check(facts(stream=ORDERS), RecipientFacts("anna@example.nl")) is None


def test_a_bounce_skips_the_identity_rules_of_the_accounts_own_mail() -> None:
    # policy: platform — identity.null_sender: a bounce from the account's MTA is not the account's mail
    verdict = evaluate(_bounce_facts())
    assert verdict.outcome is Outcome.DELIVER, verdict.findings
    assert not [f for f in verdict.findings if f.rule.startswith("identity.")]
    # The same message as the account's own mail breaks every identity rule it can.
    own = evaluate(replace(_bounce_facts(), null_sender=False))
    assert {"identity.sender_not_authorized", "identity.legal_notice_missing"} <= {f.rule for f in own.findings}


def test_a_bounce_still_gets_the_malware_rule() -> None:
    # policy: platform — identity.null_sender: malware still applies to a bounce
    eicar = POSTFIX_BOUNCE + b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n"
    verdict = evaluate(replace(facts(eicar, stream=ORDERS, mail_from=""), null_sender=True))
    assert "content.malware" in {f.rule for f in verdict.findings}
    assert verdict.outcome is Outcome.REJECT
