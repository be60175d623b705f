"""The consent-relay config for a benchmark run: one generator, so key renames happen in one place."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ACCOUNT = "shop"
STREAM = "newsletter"
# Long enough for the relay's minimum; only signs unsubscribe links of throw-away runs.
UNSUBSCRIBE_SECRET = "bench-unsubscribe-secret-0123456789"


def relay_config(
    *,
    smtp_port: int,
    upstream_port: int,
    admin_port: int,
    public_port: int,
    store_path: Path | None = None,
    store_url: str | None = None,
    workers: int | str | None = None,
    stream_kind: str = "transactional",
    profile: str = "strict",
    mode: str = "enforce",
    log_level: str = "info",
    overrides: Mapping[str, Any] | None = None,
    webhooks: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The config as a dict (docs/SPEC.md §12 shape); `overrides` is deep-merged over it last.
    `workers` None leaves `[smtp] workers` out: the relay's default ("auto", one per usable core).

    The store is the SQLite file `store_path`, or `store_url` (a postgresql:// URL) when given."""
    if store_url is None:
        if store_path is None:
            raise ValueError("relay_config needs store_path or store_url")
        store_url = "sqlite:///" + str(store_path.resolve())
    config: dict[str, Any] = {
        "smtp": {
            "listen": f"127.0.0.1:{smtp_port}",
            "hostname": "relay.bench",
            "auth_require_tls": False,
            **({"workers": workers} if workers is not None else {}),
            # smtp-source opens a new connection per message; closing ones still count briefly.
            "max_connections": 10000,
            "max_connections_per_ip": 10000,
            "idle_timeout": 60,
            "shutdown_grace": 5,
        },
        "upstream": {"host": "127.0.0.1", "port": upstream_port, "starttls": "off", "timeout": 30},
        "store": {"url": store_url},
        "http": {
            "admin_listen": f"127.0.0.1:{admin_port}",
            "public_listen": f"127.0.0.1:{public_port}",
            "public_base_url": f"http://127.0.0.1:{public_port}",
        },
        "unsubscribe": {"secrets": [UNSUBSCRIBE_SECRET], "mailto_domain": "relay.bench"},
        "policy": {"profile": profile, "mode": mode},
        "logging": {"level": log_level},
        "accounts": [
            {
                "id": ACCOUNT,
                "name": "Shop",
                "domains": ["shop.example"],
                "trusted_networks": ["127.0.0.0/8"],
                "legal_name": "Shop B.V.",
                "postal_address": "Keizersgracht 1, 1015 AA Amsterdam",
                "registration_number": "12345678",
                "abuse_contact": "abuse@shop.example",
                "default_stream": STREAM,
                "streams": [{"id": STREAM, "kind": stream_kind, "topic": STREAM}],
                **({"webhooks": [dict(w) for w in webhooks]} if webhooks else {}),
            }
        ],
    }
    return _merge(config, overrides or {})


def write_relay_config(path: Path, **kwargs: Any) -> Path:
    """Write `relay_config(**kwargs)` as TOML to `path` and return it."""
    path.write_text(to_toml(relay_config(**kwargs)), encoding="utf-8")
    return path


def consent_fields(now: datetime) -> dict[str, str]:
    """A double opt-in record collected a month ago: fresh enough for every profile's staleness rule."""
    collected = now - timedelta(days=30)
    return {
        "topic": "*",
        "basis": "double_opt_in",
        "source": "signup_form",
        "collected_at": collected.isoformat(timespec="seconds"),
        "source_url": "https://shop.example/nieuwsbrief",
        "source_ip": "192.0.2.10",
        "confirmed_at": (collected + timedelta(minutes=5)).isoformat(timespec="seconds"),
        "statement_text": "Ja, ik wil de wekelijkse nieuwsbrief van Shop ontvangen.",
        "prechecked": "false",
        "frequency_disclosed": "true",
    }


def recipients(domain_part: str, count: int) -> list[str]:
    """The addresses `smtp-source -r COUNT -t rcpt@example.net` sends to: rcpt@, 2rcpt@ … COUNTrcpt@."""
    local, _, domain = domain_part.partition("@")
    return [domain_part] + [f"{i}{local}@{domain}" for i in range(2, count + 1)]


def write_consent_csv(path: Path, addresses: list[str], now: datetime | None = None) -> Path:
    """A double opt-in record per address, for `consent-relay consent import FILE --account shop`."""
    fields = consent_fields(now or datetime.now(timezone.utc))
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["email", *fields])
        for address in addresses:
            writer.writerow([address, *fields.values()])
    return path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def to_toml(data: Mapping[str, Any]) -> str:
    """Enough TOML for this config: scalars, lists of scalars, tables and arrays of tables."""
    lines: list[str] = []
    _emit(data, (), lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _emit(table: Mapping[str, Any], prefix: tuple[str, ...], lines: list[str]) -> None:
    for key, value in table.items():
        if not isinstance(value, Mapping) and not _is_table_array(value):
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, value in table.items():
        if isinstance(value, Mapping):
            lines.extend(["", f"[{'.'.join(_key(k) for k in (*prefix, key))}]"])
            _emit(value, (*prefix, key), lines)
    for key, value in table.items():
        if _is_table_array(value):
            for item in value:
                lines.extend(["", f"[[{'.'.join(_key(k) for k in (*prefix, key))}]]"])
                _emit(item, (*prefix, key), lines)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def uncertain_copies(log: Path) -> int:
    """Copies a relay's JSON log announced as maybe delivered (`upstream_uncertain`: sent, then no
    answer; `outbox_maybe_delivered`): a second copy of those is announced, not silent."""
    count = 0
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "upstream_uncertain":
            count += int(event.get("recipients", 0))
        elif event.get("event") == "outbox_maybe_delivered":
            count += len(event.get("recipients", ()))
    return count

