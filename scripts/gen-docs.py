#!/usr/bin/env python3
"""Write the reference docs that the code itself defines, so they cannot drift from it:

docs/configuration.md (relay/config.py), docs/metrics.md (relay/metrics.py), docs/cli.md (the
argparse tree of relay/cli.py) and docs/replies.md (relay/replies.py, the rule registry and the
shipped profiles).

For the configuration:
- the keys are the ones relay.config's loader accepts (asked from the loader itself: an unknown
  key makes it list the known ones), section by section;
- type and default come from the dataclasses of relay/config.py, allowed values from the loader's
  own refusal of a wrong one;
- the description is the comment next to the key in config.example.toml (the file users copy),
  or, for the few keys the example leaves out, the line in EXTRA below.

    python scripts/gen-docs.py           # rewrite them
    python scripts/gen-docs.py --check   # exit 1 when one is stale

`make docs` runs the first; tests/test_docs.py the second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from relay import config as model  # noqa: E402
from relay.errors import ConfigError  # noqa: E402

DOCS = REPO / "docs"
EXAMPLE = REPO / "config.example.toml"

# Where each table of the file lives: (TOML table, how to reach it in a config dict, its dataclass).
TABLES: list[tuple[str, Any, type | None]] = [
    ("smtp", lambda v: {"smtp": v}, model.SmtpConfig),
    ("upstream", lambda v: {"upstream": v}, model.UpstreamConfig),
    ("store", lambda v: {"store": v}, model.StoreConfig),
    ("http", lambda v: {"http": v}, model.HttpConfig),
    ("http.admin_tokens", lambda v: {"http": {"admin_tokens": [v]}}, model.AdminToken),
    ("unsubscribe", lambda v: {"unsubscribe": v}, model.UnsubscribeConfig),
    ("policy", lambda v: {"policy": v}, model.PolicyConfig),
    ("quarantine", lambda v: {"quarantine": v}, model.QuarantineConfig),
    ("outbox", lambda v: {"outbox": v}, model.OutboxConfig),
    ("complaints", lambda v: {"complaints": v}, model.ComplaintsConfig),
    ("complaints.sources", lambda v: {"complaints": {"sources": [v]}}, model.ComplaintSource),
    ("bounces", lambda v: {"bounces": v}, model.BouncesConfig),
    ("events", lambda v: {"events": v}, model.EventsConfig),
    ("signups", lambda v: {"signups": v}, model.SignupsConfig),
    ("malware", lambda v: {"malware": v}, model.MalwareConfig),
    ("logging", lambda v: {"logging": v}, model.LoggingConfig),
    ("dkim.keys", lambda v: {"dkim": {"keys": [v]}}, model.DkimKeyConfig),
    ("accounts", lambda v: {"accounts": [v]}, model.AccountConfig),
    ("accounts.webhooks", lambda v: {"accounts": [{"id": "a", "domains": ["a.example"], "webhooks": [v]}]}, model.WebhookConfig),
    ("accounts.streams", lambda v: {"accounts": [{"id": "a", "domains": ["a.example"], "streams": [v]}]}, model.StreamConfig),
]
# Tables written [[…]] (arrays of tables) in TOML.
ARRAYS = {"dkim.keys", "accounts", "accounts.streams", "accounts.webhooks"}
# Tables written inline as a list of tables in their parent: `key = [{ … }, …]`.
INLINE_LISTS = {"http.admin_tokens": "[http] admin_tokens = [{ label, hash }, …]", "complaints.sources": "[complaints] sources = [{ name, … }, …]"}
# Tables whose keys are free (rule ids, word list names): described, not listed key by key.
FREE_TABLES = {
    "policy.actions": "One line per rule id to override its action: `\"rule.id\" = \"reject\" | \"quarantine\" | "
    "\"tempfail\" | \"monitor\" | \"off\"` (rule ids: [POLICY.md](POLICY.md); an unknown id is refused).",
    "policy.wordlists": "Extra terms for a shipped word list, by its name: `name = [\"term\", …]` or "
    "`name = { file = \"extra.txt\", terms = [...] }` (one term a line, `#` comments, path relative to the config).",
}
# Keys config.example.toml leaves out (tuning knobs): their description here.
EXTRA = {
    "smtp.tls_cert": "PEM certificate chain: STARTTLS on `listen`, and `tls_listen`",
    "smtp.tls_key": "its PEM private key (tls_cert and tls_key go together)",
    "outbox.poll_seconds": "how often the outbox looks for copies due for a retry",
    "malware.clamd_timeout": "seconds for one clamd scan before it counts as unavailable",
    "http.admin_tokens.label": "a name for the token, shown in the audit log (who released, who deleted)",
    "http.admin_tokens.hash": "the token's hash from `consent-relay hash-password`",
    "complaints.sources": "the feedback loops you signed up for: `[complaints] sources` below (docs/feedback-loop.md)",
    "complaints.sources.name": "a name for the source, shown with its reports",
    "complaints.sources.networks": "a report from a client inside these networks is verified",
    "complaints.sources.dkim_domains": "a report DKIM-signed by one of these domains is verified",
    "complaints.sources.spamtrap": "true: every abuse report from it is a spam-trap hit (pauses the account at once)",
    "bounces.verp_transactional": "transactional copies get a VERP envelope sender too (one upstream transaction per recipient)",
    "bounces.window_days": "the window of hard_limit",
    "events.webhook_poll_seconds": "how often due webhook deliveries are looked for",
    "events.webhook_retry_initial_seconds": "the first retry of a failed webhook POST; the back-off doubles from here, with jitter",
    "events.webhook_retry_max_seconds": "the back-off of webhook retries stops doubling here",
    "events.webhook_timeout": "seconds for one webhook POST",
    "accounts.webhooks": "the account's webhook endpoints: `[[accounts.webhooks]]` below (docs/events-and-webhooks.md)",
    "policy.actions": "per-rule action overrides: the `[policy.actions]` table below",
    "policy.wordlists": "extra terms for the shipped word lists: the `[policy.wordlists]` table below",
    "accounts.streams": "the account's streams: `[[accounts.streams]]` below",
    "accounts.confirmation": "the double opt-in mail: `{ from, subject, text, html }`, text and html with `{{confirm_url}}`; default: built-in nl/en/de (docs/double-opt-in.md)",
}


def accepted_keys(wrap: Any) -> list[str]:
    """The keys the loader accepts in one table: it names them when it refuses an unknown one."""
    try:
        model.build_config(wrap({"zz_unknown_key": 1}), REPO / "probe.toml")
    except ConfigError as exc:
        known = re.search(r"unknown key \(known: ([^)]*)\)", str(exc))
        assert known, str(exc)
        return [k.strip() for k in known[1].split(",")]
    raise AssertionError("the loader accepted an unknown key")


def allowed_values(wrap: Any, key: str) -> list[str] | None:
    """The loader's own list of allowed values for a string key, when it has one."""
    try:
        model.build_config(wrap({key: "zz-not-a-value"}), REPO / "probe.toml")
    except ConfigError as exc:
        choices = re.search(r"expected one of (.*), got", str(exc))
        if choices:
            return [c.strip() for c in choices[1].split(",")]
        if re.search(r'expected true, false or "auto"', str(exc)):
            return ["true", "false", '"auto"']
    except Exception:
        return None
    return None


TYPE_NAMES = [
    (r"^Listen( \| None)?$", "HOST:PORT"),
    (r"^Path( \| None)?$", "path (relative to the config file)"),
    (r"^ConfirmationTemplate \| None$", "inline table"),
    (r"^bool$", "boolean"),
    (r"^int$", "integer ≥ 0"),
    (r"^float$", "number ≥ 0"),
    (r"^str( \| None)?$", "string"),
    (r"^tuple\[str, \.\.\.\]$", "list of strings"),
    (r"^tuple\[bytes, \.\.\.\]$", "list of strings (`env:NAME` allowed)"),
    (r"^tuple\[ipaddress.*\]$", "list of networks (CIDR)"),
    (r"^tuple\[AdminToken, \.\.\.\]$", "list of `{ label, hash }` tables"),
    (r"^tuple\[StreamConfig, \.\.\.\]$", "`[[accounts.streams]]` tables"),
    (r"^tuple\[WebhookConfig, \.\.\.\]$", "`[[accounts.webhooks]]` tables"),
    (r"^tuple\[ComplaintSource, \.\.\.\]$", "list of `{ name, networks, dkim_domains, spamtrap }` tables"),
    (r"^Mapping\[.*\]$", "table"),
]


def type_name(annotation: str) -> str:
    for pattern, name in TYPE_NAMES:
        if re.match(pattern, annotation):
            return name
    return annotation


def default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, model.Listen):
        return f"`{value}`"
    if isinstance(value, str):
        return f'`"{value}"`'
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    if value in ((), {}):
        return "empty"
    return f"`{value}`"


def example_comments() -> dict[str, str]:
    """`table.key` -> the comment(s) next to it in config.example.toml (commented-out keys too)."""
    out: dict[str, str] = {}
    table, last = "", None
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip()
        header = re.match(r"^#?\s*\[\[?([\w.]+)\]\]?\s*(#.*)?$", line)
        entry = re.match(r'^(?:#\s*)?"?([A-Za-z_][\w.-]*)"?\s*=\s*(.*)$', line)
        if header:
            table, last = header[1], None
        elif entry:
            key = f"{table}.{entry[1]}" if table else entry[1]
            comment = _trailing_comment(entry[2])
            if comment and not out.get(key) or key not in out:
                out[key] = comment
            last = key
        elif line.startswith("#") and raw[:1].isspace() and last is not None:
            out[last] = f"{out[last]} {line.lstrip('#').strip()}".strip()  # an indented comment continues
        else:
            last = None
    return out


def _trailing_comment(value: str) -> str:
    """The `# comment` after a TOML value (not a # inside a string)."""
    in_string, quote = False, ""
    for i, ch in enumerate(value):
        if in_string:
            if ch == quote:
                in_string = False
        elif ch in "\"'":
            in_string, quote = True, ch
        elif ch == "#":
            return value[i + 1:].strip()
    return ""


def render_configuration() -> str:
    comments = example_comments()
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by scripts/gen-docs.py from relay/config.py and config.example.toml:",
        "     do not edit by hand; run `make docs`. tests/test_docs.py fails when this file drifts. -->",
        "",
        "One TOML file (`consent-relay … -c FILE`; without `-c`: `$CONSENT_RELAY_CONFIG`, else",
        "`./config.toml`, else `./config.example.toml`). Every key is optional unless marked *required*;",
        "an unknown key, a wrong type or a value out of its set is refused with one line naming the key",
        "(`consent-relay check-config`, exit 2). Relative paths are relative to the config file. Values",
        "shown as `env:NAME` read the environment variable NAME (secrets, a PostgreSQL URL).",
        "[`config.example.toml`](../config.example.toml) shows every key with a comment.",
        "",
    ]
    undescribed: list[str] = []
    documented_tables = {t.split(".")[0] for t, _, _ in TABLES}
    new_tables = [t for t in accepted_keys(lambda v: v) if t not in documented_tables]
    if new_tables:
        raise SystemExit(f"gen-docs: the loader accepts tables this script does not know: {', '.join(new_tables)}: add them to TABLES")
    for table, wrap, cls in TABLES:
        keys = accepted_keys(wrap)
        fields = {f.name: f for f in dataclasses.fields(cls)} if cls else {}
        brackets = f"[[{table}]]" if table in ARRAYS else f"[{table}]"
        if table in INLINE_LISTS:
            brackets = INLINE_LISTS[table]
        lines += [f"## `{brackets}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for key in keys:
            full = f"{table}.{key}"
            f = fields.get(key)
            annotation = str(f.type) if f else "?"
            kind = type_name(annotation)
            values = allowed_values(wrap, key) if "string" in kind or kind == "?" or annotation == "str" else None
            if table == "smtp" and key == "helper_process":
                values = allowed_values(wrap, key)
                kind = "boolean or string"
            if values:
                kind = " \\| ".join(f"`{v}`" if not v.startswith('"') else f"`{v}`" for v in values)
            default = default_text(f) if f else "required"
            if table == "store" and key == "url":
                default = '`"sqlite:///var/relay.db"` (next to the config file)'
            if table in ARRAYS and key in ("id", "domain", "selector", "private_key", "kind"):
                default = "*required*"
            if table == "accounts" and key == "domains":
                default = "*required* (at least one)"
            if table == "accounts.webhooks" and key == "events":
                default = "every type but `delivered`"
            if table == "accounts.streams" and key == "topic":
                default = "the stream's id"
            description = comments.get(full) or EXTRA.get(full, "")
            if not description:
                undescribed.append(full)
            lines.append(f"| `{key}` | {kind} | {default} | {_cell(description)} |")
        lines.append("")
        for free, text in FREE_TABLES.items():
            if free.rpartition(".")[0] == table:
                lines += [f"### `[{free}]`", "", text, ""]
    if undescribed:
        raise SystemExit(
            f"gen-docs: no description for {', '.join(undescribed)}: comment them in config.example.toml or add them to EXTRA"
        )
    return "\n".join(lines).rstrip() + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


GENERATED_NOTE = "<!-- Generated by scripts/gen-docs.py from {source}: do not edit by hand; run `make docs`.\n     tests/test_docs.py fails when this file drifts. -->"


def render_metrics() -> str:
    from relay.metrics import Metrics

    lines = [
        "# Metrics",
        "",
        GENERATED_NOTE.format(source="relay/metrics.py"),
        "",
        "Prometheus text format on the admin listener: `GET /metrics` (`[http] metrics_require_token = true`",
        "puts it behind the admin bearer token). With `[smtp] workers = N` the workers' samples are",
        "aggregated (counters summed; the gauges as their multiprocess mode says). Alerts on them:",
        "[`deploy/prometheus/alerts.yml`](../deploy/prometheus/alerts.yml); dashboard:",
        "[`deploy/grafana/consent-relay.json`](../deploy/grafana/consent-relay.json).",
        "",
        "| metric | type | labels | meaning |",
        "|---|---|---|---|",
    ]
    metrics = Metrics()
    families = {}
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name is None or not hasattr(value, "_labelnames"):
            continue
        kind = value._type  # counter | gauge | histogram
        shown = name + "_total" if kind == "counter" and not name.endswith("_total") else name
        families[shown] = (kind, ", ".join(f"`{label}`" for label in value._labelnames) or "—", value._documentation)
    exported = {f.name for f in metrics.registry.collect()}
    missing = {n for n in exported if n not in {k.removesuffix("_total") for k in families}}
    assert not missing, f"metrics not reachable as attributes of Metrics: {missing}"
    for name in sorted(families):
        kind, labels, help_text = families[name]
        if kind == "histogram":
            name_cell = f"`{name}` (`_bucket`, `_sum`, `_count`)"
        else:
            name_cell = f"`{name}`"
        lines.append(f"| {name_cell} | {kind} | {labels} | {_cell(help_text)} |")
    return "\n".join(lines) + "\n"


def render_cli() -> str:
    import argparse

    from relay.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command line: `consent-relay`",
        "",
        GENERATED_NOTE.format(source="the argument parser of relay/cli.py"),
        "",
        "From the checkout the command is `.venv/bin/consent-relay`. Every command takes `-c FILE`",
        "(default: `$CONSENT_RELAY_CONFIG`, else `./config.toml`, else `./config.example.toml`).",
        "Exit status: 0 done, 1 a finding (a rule would refuse; some of several ids failed), 2 bad input",
        "(one line on stderr naming what is wrong), 75 the store is unavailable.",
        "",
    ]

    def walk(p: argparse.ArgumentParser, path: list[str]) -> None:
        sub = next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)
        if path:
            lines.extend(describe(p, path))
        if sub is None:
            return
        helps = {c.dest: c.help for c in sub._choices_actions}
        for name, child in sub.choices.items():
            if child.description is None and helps.get(name):
                child.description = helps[name]
            walk(child, [*path, name])

    def describe(p: argparse.ArgumentParser, path: list[str]) -> list[str]:
        out = [f"{'#' * min(len(path) + 1, 4)} `consent-relay {' '.join(path)}`", ""]
        if p.description:
            out += [p.description[0].upper() + p.description[1:] + ("" if p.description.endswith(".") else "."), ""]
        rows = []
        for action in p._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.dest == "config":
                continue  # on every command: said once above
            if action.option_strings:
                name = ", ".join(action.option_strings)
                if action.nargs != 0:
                    name += " " + (action.metavar or action.dest.upper())
            else:
                name = action.metavar or action.dest.upper()
                if action.nargs in ("+", "*"):
                    name += "…"
            text = action.help or ""
            if action.choices:
                text = (text + "; " if text else "") + "one of " + ", ".join(f"`{c}`" for c in action.choices)
            if action.required and action.option_strings:
                text = (text + " " if text else "") + "(required)"
            rows.append(f"| `{name}` | {_cell(text)} |")
        if rows:
            out += ["| argument | meaning |", "|---|---|", *rows, ""]
        return out

    walk(parser, [])
    return "\n".join(lines).rstrip() + "\n"


def render_replies() -> str:
    from policies.profiles import PROFILE_NAMES, load_profile
    from policies.registry import ALL_RULES
    from relay import replies

    fixed = [(name, value) for name, value in vars(replies).items() if name.isupper() and isinstance(value, str) and value[:3].isdigit()]
    profiles = {name: load_profile(name) for name in PROFILE_NAMES}
    reply_of = {
        "reject": "`550 5.7.1 [rule] …`",
        "quarantine": "`250 2.6.0 Held for review as QID [rule]`",
        "tempfail": "`451 4.7.1 [rule] …`",
        "monitor": "delivered; logged and counted",
        "off": "—",
        "suspend": "the account is suspended: later MAIL FROM get `554 5.7.1 [account.suspended]`",
        "pause": "the account is paused: later MAIL FROM get `451 4.7.1 [account.paused]`",
    }
    when = {"client": "RCPT", "session": "MAIL FROM", "recipient": "RCPT", "message": "end of DATA", "account": "outside a transaction"}
    lines = [
        "# SMTP replies and rule ids",
        "",
        GENERATED_NOTE.format(source="relay/replies.py, policies/registry.py and policies/profiles/*.toml"),
        "",
        "Every refusal names the rule that decided in brackets, e.g. `550 5.7.1 [consent.missing] …`,",
        "so a log line or a bounce tells the application which rule of [POLICY.md](POLICY.md) it met",
        "(the policy text, with the source clauses of each rule). The contract: [SPEC.md](SPEC.md) §4.",
        "",
        "## Replies that carry a rule id",
        "",
        "| reply | meaning | what the application should do |",
        "|---|---|---|",
        "| `250 2.0.0 Delivered as ID; upstream: …` | accepted by the upstream MTA (its reply quoted) | done |",
        "| `250 2.0.0 Delivered to N of M recipients; refused: addr [rule], … (ID)` | delivered to some recipients, others refused by policy at end of DATA | drop the refused recipients |",
        "| `250 2.6.0 Held for review as QID [rule]` | quarantined (stored durably) for an admin | nothing; an admin releases or deletes it |",
        "| `550 5.7.1 [rule] …` | refused by a policy rule (one recipient at RCPT, or the whole message at end of DATA) | fix the cause; do not retry as is |",
        "| `554 5.7.1 [account.suspended] …` | the account is suspended | contact the relay operator |",
        "| `451 4.7.1 [rule] …` | a rule whose action is tempfail: `account.paused`, `account.rate_limited` | retry later (your MTA queue does) |",
        "| an upstream `4xx`/`5xx` | the upstream MTA refused; its reply is passed on (`upstream_passthrough`) | as the upstream says |",
        "",
        "## Fixed replies",
        "",
        "| reply | constant in relay/replies.py |",
        "|---|---|",
        *[f"| `{value}` | `{name}` |" for name, value in sorted(fixed, key=lambda item: (item[1], item[0]))],
        "",
        "## Rule ids",
        "",
        "Decided at: the SMTP step where the rule can refuse. The action per shipped profile",
        "(`[policy] profile`; `[policy.actions]` overrides one rule) decides the reply: reject →",
        "`550 5.7.1 [rule] …` (`554` for `account.suspended`), quarantine → `250 2.6.0 Held for review as",
        "QID [rule]`, tempfail → `451 4.7.1 [rule] …`, monitor → delivered and counted, off → not run.",
        "",
        "| rule id | decided at | marketing only | " + " | ".join(PROFILE_NAMES) + " |",
        "|---|---|---|" + "---|" * len(PROFILE_NAMES),
    ]
    for rule in ALL_RULES:
        stage = when.get(rule.stage.value, rule.stage.value)
        if rule.stage.value == "recipient" and not rule.before_data:
            stage = "end of DATA (per recipient)"
        actions = " | ".join(profiles[p].actions.get(rule.id).value if rule.id in profiles[p].actions else "off" for p in PROFILE_NAMES)
        lines.append(f"| `{rule.id}` | {stage} | {'yes' if rule.marketing_only else ''} | {actions} |")
    lines += ["", "What each action replies: " + "; ".join(f"{k} → {v}" for k, v in reply_of.items()) + "."]
    return "\n".join(lines) + "\n"


GENERATED = {
    "configuration.md": render_configuration,
    "metrics.md": render_metrics,
    "cli.md": render_cli,
    "replies.md": render_replies,
}


def main(argv: list[str]) -> int:
    os.environ.setdefault("COLUMNS", "100")
    stale = []
    for name, render in GENERATED.items():
        path = DOCS / name
        text = render()
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(f"docs/{name}")
            continue
        path.write_text(text)
        print(f"wrote docs/{name}")
    if stale:
        print(f"stale: {', '.join(stale)}: run `make docs` (scripts/gen-docs.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
