#!/usr/bin/env python3
"""Write the reference docs that the code itself defines, so they cannot drift from it:

docs/configuration.md (relay/config.py), docs/metrics.md (relay/metrics.py), docs/cli.md (the
argparse tree of relay/cli/main.py) and docs/replies.md (relay/replies.py, the rule registry and the
shipped profiles).

For the configuration, everything but the wording comes from the one declaration of each key in
relay/config.py (the tables from `Config` down): the tables and their keys, type, bounds, allowed
values (a Literal), default (or `doc(default=…)` in words), whether the key is required. The
description is the comment next to the key in config.example.toml (the file users copy), or, for
the few keys the example leaves out, the key's `doc(…)` in the declaration.

    python scripts/gen-docs.py           # rewrite them
    python scripts/gen-docs.py --check   # exit 1 when one is stale

`make docs` runs the first; tests/test_docs.py the second.
"""

from __future__ import annotations

import collections.abc
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from relay import config as model  # noqa: E402
from relay.errors import ConfigError  # noqa: E402

DOCS = REPO / "docs"
EXAMPLE = REPO / "config.example.toml"

# How a table is written in TOML, where that is not `[table]`: arrays of tables, and lists of
# inline tables in their parent (`key = [{ … }, …]`).
ARRAYS = {"dkim.keys", "accounts", "accounts.streams", "accounts.webhooks"}
INLINE_LISTS = {"http.admin_tokens": "[http] admin_tokens = [{ label, hash }, …]", "complaints.sources": "[complaints] sources = [{ name, … }, …]"}
# Tables whose keys are free (rule ids, word list names): described, not listed key by key.
FREE_TABLES = {
    "policy.actions": "One line per rule id to override its action: `\"rule.id\" = \"reject\" | \"quarantine\" | "
    "\"tempfail\" | \"monitor\" | \"off\"` (rule ids: [POLICY.md](POLICY.md); an unknown id is refused).",
    "policy.wordlists": "Extra terms for a shipped word list, by its name: `name = [\"term\", …]` or "
    "`name = { file = \"extra.txt\", terms = [...] }` (one term a line, `#` comments, path relative to the config).",
}


def _unwrap(kind: Any) -> tuple[Any, list[msgspec.Meta]]:
    """(the type without Annotated and `| None`, the Meta of every layer)."""
    metas: list[msgspec.Meta] = []
    while True:
        if get_origin(kind) is Annotated:
            kind, *meta = get_args(kind)
            metas += [m for m in meta if isinstance(m, msgspec.Meta)]
        elif get_origin(kind) in (Union, type(int | None)) and type(None) in get_args(kind):
            arms = [a for a in get_args(kind) if a is not type(None)]
            kind = arms[0] if len(arms) == 1 else Union[tuple(arms)]
        else:
            return kind, metas


def _is_table(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, model.Table)


def _sub_table(kind: Any) -> type | None:
    """The table a key opens as its own section: a table, or a list of tables (or of hashes and tables)."""
    if get_origin(_unwrap(kind)[0]) is tuple:
        kind = _unwrap(get_args(_unwrap(kind)[0])[0])[0]
        arms = get_args(kind) if get_origin(kind) in (Union, type(int | None)) else (kind,)
        return next((a for a in arms if _is_table(a)), None)
    if get_origin(kind) is not Annotated and _is_table(kind):  # an optional table is an inline-table key
        return kind
    return None


def tables() -> list[tuple[str, type]]:
    """(TOML name, table) for each section of the reference: `Config`'s tables in declaration order,
    each followed by its own; a table holding nothing but tables (`[dkim]`) has no section itself,
    and one met again (`{ label, hash }` of accounts.api_keys) is described where it came first."""
    out: list[tuple[str, type]] = []
    seen: set[type] = set()

    def walk(name: str, table: type) -> None:
        if table in seen:
            return
        seen.add(table)
        hints = model.field_types(table)
        subs = [(f"{name}.{f.encode_name}" if name else f.encode_name, _sub_table(hints[f.name])) for f in _fields(table)]
        if name and not all(sub for _, sub in subs):
            out.append((name, table))
        for sub_name, sub in subs:
            if sub is not None:
                walk(sub_name, sub)

    walk("", model.Config)
    return out


def _fields(table: type) -> list[Any]:
    return [f for f in msgspec.structs.fields(table) if f.encode_name in model.known_keys(table)]


def accepted_keys(table: str) -> list[str]:
    """The keys the loader accepts in one table, asked from the loader: it names them when it
    refuses an unknown one (tests/test_docs.py holds the reference to them)."""
    probe: Any = {"zz_unknown_key": 1}
    parts = table.split(".")
    for depth in range(len(parts), 0, -1):
        listed = ".".join(parts[:depth]) in ARRAYS or ".".join(parts[:depth]) in INLINE_LISTS
        probe = {parts[depth - 1]: [probe] if listed else probe}
    try:
        model.build_config(probe, REPO / "probe.toml")
    except ConfigError as exc:
        known = re.search(r"unknown key \(known: ([^)]*)\)", str(exc))
        assert known, str(exc)
        return [k.strip() for k in known[1].split(",")]
    raise AssertionError("the loader accepted an unknown key")


NAMED_TYPES = {model.Listen: "HOST:PORT", Path: "path (relative to the config file)", bool: "boolean", str: "string"}
LIST_TYPES = {str: "list of strings", model.UnsubscribeSecret: "list of strings (`env:NAME` allowed)", model.Network: "list of networks (CIDR)"}


def type_name(table: str, kind: Any) -> str:
    kind, metas = _unwrap(kind)
    bounds = {b: getattr(m, b) for m in metas for b in ("ge", "gt") if getattr(m, b) is not None}
    if kind in (int, float):
        word = "integer" if kind is int else "number"
        return f"{word} > {bounds['gt']}" if "gt" in bounds else f"{word} ≥ {bounds.get('ge', 0)}"
    if get_origin(kind) is Literal:
        return " \\| ".join(f"`{v}`" for v in get_args(kind))
    if get_origin(kind) in (Union, type(int | None)):  # true, false or a word
        return " \\| ".join("`true` \\| `false`" if a is bool else type_name(table, a) for a in get_args(kind)).replace("`auto`", '`"auto"`')
    if get_origin(kind) is tuple:
        sub = _sub_table(kind)
        if sub is not None and table in ARRAYS:
            return f"`[[{table}]]` tables"
        if sub is not None:
            return f"list of `{{ {', '.join(f.encode_name for f in _fields(sub))} }}` tables"
        item = _unwrap(get_args(kind)[0])[0]
        return LIST_TYPES.get(item, f"list of {item.__name__}")
    if _is_table(kind):
        return "inline table"
    if get_origin(kind) in (dict, collections.abc.Mapping):
        return "table"
    return NAMED_TYPES.get(kind, getattr(kind, "__name__", str(kind)))


def default_text(field: Any, kind: Any) -> str:
    words = next((m.extra["default"] for m in _unwrap(kind)[1] if m.extra and "default" in m.extra), None)
    if words:
        return words
    if field.default is not msgspec.NODEFAULT:
        value = field.default
    elif field.default_factory is not msgspec.NODEFAULT:
        value = field.default_factory()
    else:
        return "*required*"
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


def declared_description(kind: Any) -> str:
    return next((m.description for m in _unwrap(kind)[1] if m.description), "")


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
    for table, cls in tables():
        hints = model.field_types(cls)
        brackets = INLINE_LISTS.get(table) or (f"[[{table}]]" if table in ARRAYS else f"[{table}]")
        lines += [f"## `{brackets}`", "", "| key | type | default | description |", "|---|---|---|---|"]
        for field in sorted(_fields(cls), key=lambda f: f.encode_name):
            key, kind = field.encode_name, hints[field.name]
            full = f"{table}.{key}"
            sub = _sub_table(kind)
            shown = type_name(f"{table}.{key}" if sub is not None else table, kind)
            description = comments.get(full) or declared_description(kind)
            if not description:
                undescribed.append(full)
            lines.append(f"| `{key}` | {shown} | {default_text(field, kind)} | {_cell(description)} |")
        lines.append("")
        for free, text in FREE_TABLES.items():
            if free.rpartition(".")[0] == table:
                lines += [f"### `[{free}]`", "", text, ""]
    if undescribed:
        raise SystemExit(
            f"gen-docs: no description for {', '.join(undescribed)}: comment them in config.example.toml or give them a doc(…) in relay/config.py"
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

    from relay.cli.main import build_parser

    parser = build_parser()
    lines = [
        "# Command line: `consent-relay`",
        "",
        GENERATED_NOTE.format(source="the argument parser of relay/cli/main.py"),
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

    fixed = [(name, value) for name, value in vars(replies).items() if name.isupper() and isinstance(value, str) and value[:3].isdigit() and value not in replies.NOT_SENT_BY_THE_RELAY]
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
