"""Proof of consent for one address: every question of the CSA complaint procedure, its suppressions,
and the messages the relay delivered under which consent (docs/SPEC.md §5, §12)."""

from __future__ import annotations

from dataclasses import fields
from datetime import datetime
from typing import Any

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import ConsentRecord, Suppression
from policies.rules.consent import THIRD_PARTY_SOURCES, last_sign_of_life
from relay.consent.imports import account_scopes
from relay.consent.signups import signup_as_dict
from relay.errors import UsageError
from relay.services import Services
from relay.store.records import DeliveryRecord, iso

SOURCE_TEXT = {
    "signup_form": "a signup form on the sender's website",
    "order_process": "the sender's online order process",
    "newsletter_signup": "a newsletter signup",
    "offline": "offline (in person, on paper)",
    "business_card": "a business card handed to the sender",
    "customer_purchase": "a purchase by the customer",
    "co_registration": "co-registration with partners (third party)",
    "partner": "a partner (third party)",
    "lottery": "a lottery or prize draw (third party)",
    "questionnaire": "a questionnaire (third party)",
    "purchased": "a purchased list (third party)",
    "rented": "a rented list (third party)",
    "traded": "a traded list (third party)",
    "borrowed": "a borrowed list (third party)",
    "found": "found elsewhere (third party)",
    "harvested": "harvested from a public place",
    "terms_and_conditions": "general terms and conditions",
    "other": "other",
}
BASIS_TEXT = {
    "opt_in": "single opt-in",
    "double_opt_in": "double opt-in (confirmed)",
    "existing_customer": "existing customer (soft opt-in for similar products)",
    "business_card": "business card",
    "offline_form": "offline form with a ticked box",
}


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    return value


def consent_as_dict(record: ConsentRecord) -> dict[str, Any]:
    """Every field of the record, dates as ISO-8601 UTC; `id` as stored (a string)."""
    return {f.name: _json_value(getattr(record, f.name)) for f in fields(record)}


def suppression_as_dict(suppression: Suppression) -> dict[str, Any]:
    return {f.name: _json_value(getattr(suppression, f.name)) for f in fields(suppression)}


def delivery_as_dict(delivery: DeliveryRecord) -> dict[str, Any]:
    return {
        "relay_id": delivery.relay_id,
        "message_id": delivery.message_id,
        "stream": delivery.stream,
        "delivered_at": iso(delivery.delivered_at),
        "consent_id": str(delivery.consent_id) if delivery.consent_id is not None else None,
        "status": delivery.status,
        "scope": delivery.scope,
        "topic": delivery.topic,
    }


def address_argument(email: str) -> str:
    try:
        return normalize_address(email)
    except InvalidAddress as exc:
        raise UsageError(str(exc)) from None


async def build_proof(services: Services, email: str, account_id: str) -> dict[str, Any]:
    """The docs/SPEC.md §12 proof shape for one address and account (consents at its own and its parent scope)."""
    address = address_argument(email)
    scopes = account_scopes(services, account_id)
    store = services.store
    consents = (await store.consent.find_consents(scopes, [address])).get(address, [])
    suppressions = (await store.consent.find_suppressions(scopes, [address])).get(address, [])
    deliveries = await store.decisions.deliveries_to(address, [account_id])
    bounces = await store.bounces.list(account=account_id, email=address, limit=100)
    signups = await store.signups.for_address(address, [account_id])
    consents.sort(key=lambda c: (scopes.index(c.scope) if c.scope in scopes else len(scopes), c.topic, c.id))
    return {
        "email": address,
        "account": account_id,
        "consents": [consent_as_dict(c) for c in consents],
        "suppressions": [suppression_as_dict(s) for s in suppressions],
        "deliveries": [delivery_as_dict(d) for d in deliveries],
        "bounces": [
            {"id": b.id, "kind": b.kind, "status": b.status, "diagnostic": b.diagnostic, "relay_id": b.relay_id,
             "received_at": b.received_at.isoformat()}
            for b in bounces
        ],
        "signups": [signup_as_dict(s) for s in signups],
    }


def _when(value: str | None) -> str:
    if not value:
        return "not recorded"
    moment = datetime.fromisoformat(value)
    text = moment.strftime("%Y-%m-%d %H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}"
    return text + (" UTC" if moment.utcoffset() is not None and not moment.utcoffset() else moment.strftime(" %z"))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


def _or_missing(value: str) -> str:
    return value if value else "not recorded"


def render_proof_text(proof: dict[str, Any]) -> str:
    """Plain-language answers to the CSA complaint questionnaire, for a complaints desk."""
    lines = [f"Proof of consent for {proof['email']} (account {proof['account']})", ""]
    consents = proof["consents"]
    if not consents:
        lines.append("No consent is recorded for this address at this account or its parent organisation.")
    for c in consents:
        record = ConsentRecord(**{k: _from_json(k, v) for k, v in c.items()})
        lines += _consent_lines(c, record)
    lines.append("Suppressions (the address will not be mailed):")
    if not proof["suppressions"]:
        lines.append("  none")
    for s in proof["suppressions"]:
        reason = {
            "suppression.unsubscribed": "unsubscribed", "suppression.complaint": "complained",
            "suppression.bounced": "hard-bounced",
        }.get(s["reason"], s["reason"])
        lines.append(
            f"  {reason} on {_when(s['created_at'])} via {s['via'] or 'unknown'}, scope {s['scope']}, topic {s['topic']}"
        )
    lines.append("")
    lines.append("Messages the relay delivered to this address:")
    if not proof["deliveries"]:
        lines.append("  none")
    for d in proof["deliveries"]:
        relied = f"under consent #{d['consent_id']}" if d.get("consent_id") else "with no consent recorded"
        lines.append(
            f"  {_when(d['delivered_at'])}  stream {d['stream']}  message-id {d['message_id'] or '-'}  "
            f"relay id {d['relay_id']}  {relied}"
        )
    if proof.get("bounces"):
        lines.append("")
        lines.append("Bounces (delivery status notifications about this address):")
        for b in proof["bounces"]:
            lines.append(
                f"  {_when(b['received_at'])}  {b['kind']}  status {b['status'] or '-'}  relay id {b['relay_id'] or '-'}  "
                f"{b['diagnostic'][:120]}"
            )
    lines += _signup_lines(proof.get("signups", []))
    return "\n".join(lines) + "\n"


def _signup_lines(signups: list[dict[str, Any]]) -> list[str]:
    """The double opt-in chain of each hosted signup: request, confirmation mail, confirmation."""
    if not signups:
        return []
    lines = ["", "Double opt-in through the relay (signup, confirmation mail, confirmation):"]
    for s in signups:
        req, mail, conf = s["request"], s["mail"], s["confirmation"]
        lines += [
            f"  Signup #{s['id']} — stream {s['stream']}, topic {s['topic']}",
            f"    1. requested {_when(req['requested_at'])} via {req['method']} on {req['source_url']} from IP {req['ip']}"
            f" (language {req['language']}, by {req['requested_by'] or 'unknown'})",
            f"       statement shown: {req['statement']}",
            f"       frequency shown: {req['frequency'] or 'not recorded'}",
            f"    2. confirmation mail relay id {mail['relay_id']}, message-id {mail['message_id'] or '-'}: "
            + (f"delivered to the upstream {_when(mail['delivered_at'])}" if mail["status"] == "delivered" else mail["status"]),
            "    3. "
            + (
                f"confirmed {_when(conf['confirmed_at'])} from IP {conf['ip'] or 'not recorded'} (opt-in type double)"
                if conf
                else "not confirmed"
            ),
        ]
    return lines


def _from_json(name: str, value: Any) -> Any:
    if isinstance(value, str) and name.endswith("_at") and value:
        return datetime.fromisoformat(value)
    return value


def _consent_lines(c: dict[str, Any], record: ConsentRecord) -> list[str]:
    status = (
        f"REVOKED on {_when(c['revoked_at'])}" + (f" via {c['revoked_via']}" if c["revoked_via"] else "")
        if c["revoked_at"]
        else "active"
    )
    topic = "every marketing topic" if c["topic"] == "*" else f"topic {c['topic']!r}"
    third = "yes: " + SOURCE_TEXT.get(c["source"], c["source"]) if c["source"] in THIRD_PARTY_SOURCES else "no"
    last = last_sign_of_life(record)
    out = [
        f"Consent #{c['id']} — scope {c['scope']}, {topic} — {status}",
        f"  When was the address collected?            {_when(c['collected_at'])}",
        f"  How was it collected?                      {SOURCE_TEXT.get(c['source'], c['source'])}",
        f"  Through a third party?                     {third}",
        f"  Co-registration partners:                  {c['co_registration_partners'] or 'none'}",
        f"  URL where it was collected:                {_or_missing(c['source_url'])}",
        f"  IP address of the address's owner:         {_or_missing(c['source_ip'])}",
        f"  Opt-in type:                               {BASIS_TEXT.get(c['basis'], c['basis'])}",
    ]
    if c["basis"] == "double_opt_in":
        out.append(f"  Confirmed (double opt-in) at:              {_when(c['confirmed_at'])}")
    out += [
        f"  Consent statement shown:                   {_or_missing(c['statement_text'])}",
        f"  Could the recipient consent explicitly?    "
        + ("no: the box was pre-ticked" if c["prechecked"] else "yes: the recipient ticked the box or signed up actively"),
        f"  Sending frequency disclosed:               {_yes_no(c['frequency_disclosed'])}",
    ]
    if c["basis"] == "existing_customer" or c["customer_relationship"]:
        out += [
            f"  Customer relationship:                     {_or_missing(c['customer_relationship'])}",
            f"  Last purchase:                             {_when(c['last_purchase_at'])}",
            f"  Informed at collection that the address would be used for marketing: {_yes_no(c['informed_at_collection'])}",
            f"  Offered an (immediate) objection:          {_yes_no(c['objection_offered'])}",
        ]
    if c["basis"] == "business_card" or c["source"] == "business_card":
        out.append(f"  Told that contact by e-mail would follow:  {_yes_no(c['email_contact_announced'])}")
    out += [
        f"  Last interaction:                          {_when(c['last_interaction_at'])}",
        f"  Last sign of life:                         {_when(iso(last))}",
        f"  Recorded at / updated at:                  {_when(c['created_at'])} / {_when(c['updated_at'])}",
        "",
    ]
    return out
