"""The double opt-in chain of a proof in the admin UI: signup request, confirmation mail, confirmation."""

from __future__ import annotations

from typing import Any, Sequence

from relay.web.render import Safe, join, tag


def signup_chain_html(signups: Sequence[dict[str, Any]]) -> Safe:
    if not signups:
        return Safe("")
    rows = []
    for s in signups:
        req, mail, conf = s["request"], s["mail"], s["confirmation"]
        sent = f"delivered {mail['delivered_at']}" if mail["status"] == "delivered" else mail["status"]
        confirmed = f"{conf['confirmed_at']} from {conf['ip'] or 'unknown IP'}" if conf else "not confirmed"
        rows.append(
            tag("tr", join([
                tag("td", f"#{s['id']} {s['stream']}"),
                tag("td", join([tag("div", f"{req['requested_at']} via {req['method']}"),
                                tag("div", f"{req['source_url']} from {req['ip']}", class_="muted"),
                                tag("div", req["statement"], class_="muted")])),
                tag("td", join([tag("code", mail["relay_id"]), tag("div", sent, class_="muted")])),
                tag("td", confirmed),
            ]))
        )
    return Safe(
        '<section class="card"><h2>Double opt-in through the relay</h2><table class="list"><thead><tr>'
        "<th>Signup</th><th>1. Request</th><th>2. Confirmation mail (relay id)</th><th>3. Confirmed</th></tr></thead>"
        f"<tbody>{join(rows)}</tbody></table></section>"
    )
