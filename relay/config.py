"""Load and validate the one TOML config file (docs/SPEC.md §12). Every error names its key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import MARKETING, TRANSACTIONAL, AccountFacts, StreamFacts
from policies.findings import Action
from policies.profiles import PROFILE_NAMES
from policies.rules.content import iban_valid
from relay.errors import ConfigError
from relay.event_types import DEFAULT_WEBHOOK_EVENTS, EVENT_TYPES
from relay.passwords import is_password_hash

DEFAULT_CONFIG = "config.toml"
EXAMPLE_CONFIG = "config.example.toml"  # the checkout's, used when there is no config.toml


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SmtpConfig:
    listen: Listen = Listen("127.0.0.1", 2525)
    tls_listen: Listen | None = None
    hostname: str = "localhost"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth_require_tls: bool = True
    max_message_size: int = 26214400
    max_recipients: int = 1000
    workers: int = 1
    # Policy evaluation and DKIM's private-key step in a helper process per worker: a spare core
    # for the CPU-bound part, the event loop kept for sessions. "auto": when workers leave a core.
    helper_process: str = "auto"  # auto | on | off
    idle_timeout: float = 300  # per command, and per read while DATA flows (RFC 5321 4.5.3.2)
    data_timeout: float = 3600  # the whole DATA phase, 354 to the final dot, however the data trickles
    shutdown_grace: float = 30
    max_connections: int = 1000
    max_connections_per_ip: int = 50
    auth_max_failures: int = 5
    auth_lockout_seconds: float = 900


@dataclass(frozen=True)
class UpstreamConfig:
    host: str = "127.0.0.1"
    port: int = 25
    starttls: str = "opportunistic"
    username: str | None = None
    password: str | None = None
    timeout: float = 30
    pool_size: int = 8
    tls_verify: bool = True


@dataclass(frozen=True)
class StoreConfig:
    url: str = "sqlite:///var/relay.db"
    timeout: float = 5.0
    # True: this relay is one of several instances (hosts) of one PostgreSQL deployment. Otherwise
    # `serve` holds a lock and a second `serve` on the same store refuses to start.
    shared: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite://")


@dataclass(frozen=True)
class AdminToken:
    label: str
    hash: str


@dataclass(frozen=True)
class HttpConfig:
    admin_listen: Listen | None = Listen("127.0.0.1", 8025)
    public_listen: Listen | None = None
    public_base_url: str = "http://127.0.0.1:8080"
    admin_tokens: tuple[AdminToken, ...] = ()
    metrics_require_token: bool = False


@dataclass(frozen=True)
class UnsubscribeConfig:
    secrets: tuple[bytes, ...] = ()
    mailto_domain: str = "localhost"
    placeholder: str = "{{unsubscribe_url}}"
    csa_complaints: str | None = None


@dataclass(frozen=True)
class PolicyConfig:
    profile: str = "strict"
    mode: str = "enforce"
    actions: Mapping[str, str] = field(default_factory=dict)
    wordlists: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class QuarantineConfig:
    retention_days: float = 30


@dataclass(frozen=True)
class OutboxConfig:
    retry_initial_seconds: float = 60
    retry_max_seconds: float = 3600
    give_up_after_hours: float = 120
    poll_seconds: float = 1.0
    # A claimed copy is leased for this long, renewed every third of it while its holder works;
    # after a crash its copies wait at most this long for another process.
    lease_seconds: float = 15.0


@dataclass(frozen=True)
class ComplaintSource:
    """A feedback loop the operator signed up for (docs/SPEC.md §16): its reports are verified."""

    name: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    dkim_domains: tuple[str, ...] = ()
    spamtrap: bool = False  # every abuse report from it is a spam-trap hit

    def covers(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.networks)


@dataclass(frozen=True)
class ComplaintsConfig:
    ack_deadline_hours: float = 24
    rate_threshold: float = 0.003
    rate_min_complaints: int = 3
    rate_window_hours: float = 24
    sources: tuple[ComplaintSource, ...] = ()

    def source_for_client(self, ip: str) -> ComplaintSource | None:
        return next((s for s in self.sources if s.covers(ip)), None)

    def source_for_dkim(self, domains: Iterable[str]) -> ComplaintSource | None:
        signed = {d.lower().rstrip(".") for d in domains}
        return next((s for s in self.sources if signed & set(s.dkim_domains)), None)


@dataclass(frozen=True)
class BouncesConfig:
    """docs/SPEC.md §15: VERP envelope senders and what a DSN does."""

    verp: bool = True  # marketing copies get bounce+ID@mailto_domain
    verp_transactional: bool = False
    hard_limit: int = 3  # other permanent failures within window_days before suppression.bounced
    window_days: float = 30


@dataclass(frozen=True)
class SignupsConfig:
    """[signups] (docs/SPEC.md §18): hosted double opt-in."""

    confirm_ttl_hours: float = 72
    resend_after_hours: float = 24
    client_rate_per_hour: int = 10  # signups per client address (the form filler's IP) and account


@dataclass(frozen=True)
class ConfirmationTemplate:
    """[[accounts]] confirmation: the account's own confirmation mail; {{confirm_url}} is the link."""

    sender: str = ""  # `from` in the file
    subject: str = ""
    text: str = ""
    html: str = ""


@dataclass(frozen=True)
class MalwareConfig:
    clamd: str | None = None
    clamd_unavailable: str = "tempfail"
    clamd_timeout: float = 30


@dataclass(frozen=True)
class DkimKeyConfig:
    domain: str
    selector: str
    private_key: Path


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    log_recipients: str = "hashed"


@dataclass(frozen=True)
class StreamConfig:
    id: str
    kind: str
    topic: str
    envelope_from: tuple[str, ...] = ()
    title: str = ""  # the topic in words on the recipient's pages; the loader fills in the id

    @property
    def display_title(self) -> str:
        return self.title or self.id

    @property
    def facts(self) -> StreamFacts:
        return StreamFacts(self.id, self.kind, self.topic)


@dataclass(frozen=True)
class EventsConfig:
    retention_days: float = 30.0  # the event feed keeps this long (docs/SPEC.md §17)
    webhook_timeout: float = 10.0  # one POST
    webhook_retry_initial_seconds: float = 5.0  # backoff doubles from here, with jitter…
    webhook_retry_max_seconds: float = 3600.0  # …up to this
    webhook_give_up_hours: float = 24.0  # an endpoint failing this long is disabled
    webhook_poll_seconds: float = 1.0


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str  # whsec_BASE64 (Standard Webhooks)
    events: tuple[str, ...]

    @property
    def endpoint(self) -> str:
        """A stable name for the endpoint's delivery state: its URL may move in the list."""
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class AccountConfig:
    id: str
    name: str = ""
    password_hash: str | None = None
    domains: tuple[str, ...] = ()
    trusted_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    legal_name: str = ""
    postal_address: str = ""
    registration_number: str = ""
    parent: str | None = None
    abuse_contact: str | None = None
    allow_adult: bool = False
    default_stream: str | None = None
    rate_limit_per_minute: int = 0
    streams: tuple[StreamConfig, ...] = ()
    bounce_forward: str | None = None  # docs/SPEC.md §15: DSNs about this account's mail are forwarded here
    own_ibans: tuple[str, ...] = ()
    tracking_hosts: tuple[str, ...] = ()
    api_keys: tuple[AdminToken, ...] = ()  # bearer keys acting for this account only (docs/SPEC.md §17)
    webhooks: tuple[WebhookConfig, ...] = ()
    confirmation: ConfirmationTemplate | None = None
    # The recipient's pages (docs/SPEC.md §6): the parent organisation's name, the account's logo and colour.
    parent_name: str = ""
    logo_url: str | None = None
    accent_color: str | None = None

    @property
    def display_name(self) -> str:
        return self.name or self.legal_name or self.id

    def stream(self, stream_id: str) -> StreamConfig | None:
        return next((s for s in self.streams if s.id == stream_id), None)

    def stream_for_envelope(self, mail_from: str) -> StreamConfig | None:
        sender = mail_from.lower()
        return next((s for s in self.streams if sender in s.envelope_from), None)

    @property
    def all_marketing(self) -> bool:
        return bool(self.streams) and all(s.kind == MARKETING for s in self.streams)

    def trusts(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.trusted_networks)

    def facts(self, state: str = "active", reason: str = "", paused_streams: frozenset[str] = frozenset()) -> AccountFacts:
        return AccountFacts(
            id=self.id,
            name=self.name,
            domains=frozenset(self.domains),
            legal_name=self.legal_name,
            postal_address=self.postal_address,
            registration_number=self.registration_number,
            parent=self.parent,
            allow_adult=self.allow_adult,
            state=state,
            state_reason=reason,
            paused_streams=paused_streams,
            own_ibans=frozenset(self.own_ibans),
            tracking_hosts=frozenset(self.tracking_hosts),
        )


@dataclass(frozen=True)
class Config:
    path: Path
    smtp: SmtpConfig
    upstream: UpstreamConfig
    store: StoreConfig
    http: HttpConfig
    unsubscribe: UnsubscribeConfig
    policy: PolicyConfig
    quarantine: QuarantineConfig
    outbox: OutboxConfig
    complaints: ComplaintsConfig
    malware: MalwareConfig
    dkim_keys: tuple[DkimKeyConfig, ...]
    logging: LoggingConfig
    accounts: tuple[AccountConfig, ...]
    events: EventsConfig = EventsConfig()
    bounces: BouncesConfig = BouncesConfig()
    signups: SignupsConfig = SignupsConfig()

    def account(self, account_id: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    def account_trusting(self, ip: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.trusts(ip)), None)

    def accounts_under(self, scope: str) -> tuple[AccountConfig, ...]:
        return tuple(a for a in self.accounts if a.id == scope or a.parent == scope)


# --- value parsers: each takes (key, raw value) and raises ConfigError naming the key ---


def _type_name(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, f"expected a string, got {_type_name(value)}")
    return value


def _int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"expected an integer, got {_type_name(value)}")
    if value < 0:
        raise ConfigError(key, "must not be negative")
    return value


def _positive_int(key: str, value: Any) -> int:
    """A limit where 0 is not "unlimited" but "nothing passes": refused (docs/SPEC.md §12)."""
    number = _int(key, value)
    if number == 0:
        raise ConfigError(key, "must be at least 1 (0 would refuse every transaction)")
    return number


def _num(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(key, f"expected a number, got {_type_name(value)}")
    if value < 0:
        raise ConfigError(key, "must not be negative")
    return float(value)


def _positive_num(key: str, value: Any) -> float:
    """A timeout: 0 would give up on every client, upstream or store call at once."""
    number = _num(key, value)
    if number == 0:
        raise ConfigError(key, "must be greater than 0")
    return number


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"expected true or false, got {_type_name(value)}")
    return value


def _on_off_auto(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "auto":
        return "auto"
    raise ConfigError(key, f"expected true, false or \"auto\", got {value!r}")


def helper_enabled(smtp: SmtpConfig) -> bool:
    """Whether each relay process gets a helper: "auto" when the workers leave a core free (with a
    worker per core, a helper only adds hand-offs: measured slower)."""
    if smtp.helper_process != "auto":
        return smtp.helper_process == "on"
    return smtp.workers < len(os.sched_getaffinity(0))


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        text = _str(key, value)
        if text not in choices:
            raise ConfigError(key, f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


def _str_list(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of strings, got {_type_name(value)}")
    return tuple(_str(f"{key}[{i}]", v) for i, v in enumerate(value))


def _listen(key: str, value: Any) -> Listen:
    text = _str(key, value)
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(key, f"expected HOST:PORT, got {text!r}")
    return Listen(host, int(port))


def resolve_secret(key: str, value: Any) -> str:
    """`env:NAME` reads the environment; anything else is taken literally."""
    text = _str(key, value)
    if text.startswith("env:"):
        name = text[4:]
        if not name or name not in os.environ:
            raise ConfigError(key, f"environment variable {name or '(empty)'} is not set")
        return os.environ[name]
    return text


def _hash(key: str, value: Any) -> str:
    text = resolve_secret(key, value)
    if not is_password_hash(text):
        raise ConfigError(key, "expected a hash from `consent-relay hash-password` (scrypt$…), not a plain secret")
    return text


def _readable(base: Path) -> Callable[[str, Any], Path]:
    def parse(key: str, value: Any) -> Path:
        path = Path(_str(key, value))
        if not path.is_absolute():
            path = base / path
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from exc
        return path

    return parse


def _section(key: str, data: Any, fields: Mapping[str, Callable[[str, Any], Any]]) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a table, got {_type_name(data)}")
    out: dict[str, Any] = {}
    for name, value in data.items():
        full = f"{key}.{name}" if key else name
        if name not in fields:
            raise ConfigError(full, f"unknown key (known: {', '.join(sorted(fields))})")
        out[name] = fields[name](full, value)
    return out


def _store_url(base: Path) -> Callable[[str, Any], str]:
    def parse(key: str, value: Any) -> str:
        url = resolve_secret(key, value)  # a PostgreSQL URL may carry a password: env:NAME
        if url.startswith("sqlite:////"):
            return url
        if url.startswith("sqlite:///"):
            return "sqlite:///" + str((base / url[len("sqlite:///"):]).resolve())
        if url.startswith(("postgresql://", "postgres://")):
            return url
        raise ConfigError(key, "expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://…")

    return parse


def sqlite_path(url: str) -> Path:
    """sqlite:////abs/path -> /abs/path (relative URLs were made absolute at load)."""
    return Path("/" + url[len("sqlite:///"):].lstrip("/"))


def _admin_tokens(key: str, value: Any) -> tuple[AdminToken, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list, got {_type_name(value)}")
    tokens = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        if isinstance(item, str):
            tokens.append(AdminToken(label=f"token{i + 1}", hash=_hash(k, item)))
        else:
            parsed = _section(k, item, {"label": _str, "hash": _hash})
            if "hash" not in parsed:
                raise ConfigError(f"{k}.hash", "missing")
            tokens.append(AdminToken(label=parsed.get("label", f"token{i + 1}"), hash=parsed["hash"]))
    return tuple(tokens)


def _secrets(key: str, value: Any) -> tuple[bytes, ...]:
    items = _str_list(key, value)
    out = []
    for i, item in enumerate(items):
        secret = resolve_secret(f"{key}[{i}]", item)
        if len(secret) < 16:
            raise ConfigError(f"{key}[{i}]", "an unsubscribe secret needs at least 16 characters")
        out.append(secret.encode("utf-8"))
    return tuple(out)


def _actions(key: str, value: Any) -> dict[str, str]:
    from policies.registry import RULES_BY_ID

    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {_type_name(value)}")
    out = {}
    valid = [a.value for a in Action]
    for rule_id, action in value.items():
        k = f'{key}."{rule_id}"'
        if rule_id not in RULES_BY_ID and not rule_id.startswith("account."):
            raise ConfigError(k, "unknown rule id")
        out[rule_id] = _choice(*valid)(k, action)
        fixed = RULES_BY_ID[rule_id].fixed_action if rule_id in RULES_BY_ID else None
        if fixed is not None and out[rule_id] != fixed.value:
            raise ConfigError(k, f"must be {fixed.value!r}: nothing may grant relay permission (docs/POLICY.md)")
    return out


def _wordlists(base: Path) -> Callable[[str, Any], dict[str, tuple[str, ...]]]:
    """`name = ["term", …]`, or `name = { file = "extra.txt", terms = [...] }` with one term a line
    (`#` comments) in a file relative to the config; only the shipped list names are accepted."""

    def parse(key: str, value: Any) -> dict[str, tuple[str, ...]]:
        from policies.wordlists import parse_terms, shipped_names

        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table of lists, got {_type_name(value)}")
        known = shipped_names()
        lists: dict[str, tuple[str, ...]] = {}
        for name, spec in value.items():
            k = f"{key}.{name}"
            if name not in known:
                raise ConfigError(k, f"unknown word list (known: {', '.join(sorted(known))})")
            if not isinstance(spec, dict):
                lists[name] = _str_list(k, spec)
                continue
            parsed = _section(k, spec, {"terms": _str_list, "file": _str})
            terms = list(parsed.get("terms", ()))
            if "file" in parsed:
                path = Path(parsed["file"])
                path = path if path.is_absolute() else base / path
                try:
                    terms += parse_terms(path.read_bytes().decode("utf-8"))
                except OSError as exc:
                    raise ConfigError(f"{k}.file", f"cannot read {path}: {exc.strerror or exc}") from exc
                except UnicodeDecodeError as exc:
                    raise ConfigError(f"{k}.file", f"{path} is not UTF-8") from exc
            lists[name] = tuple(dict.fromkeys(terms))
        return lists

    return parse


# The broadest trusted network accepted (docs/SPEC.md §12): a trusted client sends without AUTH, so a
# network covering a large part of the internet makes the relay an open relay for that account.
# IPv4: /8 (10.0.0.0/8 is the broadest private range). IPv6: /32 (one provider's allocation),
# except inside the private fc00::/7. IPv4 embedded in IPv6 (::ffff:0:0/96, 64:ff9b::/96) is
# held to the IPv4 bound, since a dual-stack listener sees IPv4 clients that way.
MIN_TRUSTED_PREFIX_V4 = 8
MIN_TRUSTED_PREFIX_V6 = 32
_EMBEDDED_V4 = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))
_PRIVATE_V6 = ipaddress.IPv6Network("fc00::/7")


def _too_broad(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str | None:
    if isinstance(net, ipaddress.IPv4Network):
        if net.prefixlen < MIN_TRUSTED_PREFIX_V4:
            return f"/{MIN_TRUSTED_PREFIX_V4}"
        return None
    for embedded in _EMBEDDED_V4:
        if net.subnet_of(embedded) and net.prefixlen - 96 < MIN_TRUSTED_PREFIX_V4:
            return f"/{96 + MIN_TRUSTED_PREFIX_V4} (IPv4 /{MIN_TRUSTED_PREFIX_V4} inside {embedded})"
    if net.prefixlen < MIN_TRUSTED_PREFIX_V6 and not net.subnet_of(_PRIVATE_V6):
        return f"/{MIN_TRUSTED_PREFIX_V6}"
    return None


def _networks(key: str, value: Any) -> tuple[Any, ...]:
    nets = []
    for i, text in enumerate(_str_list(key, value)):
        try:
            net = ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ConfigError(f"{key}[{i}]", f"not a network: {text!r}") from exc
        bound = _too_broad(net)
        if bound is not None:
            raise ConfigError(
                f"{key}[{i}]",
                f"{text!r} is too broad: trusted clients send without AUTH, so this would make an open relay "
                f"(the broadest accepted is {bound}; list the application servers' networks)",
            )
        nets.append(net)
    return tuple(nets)


def _complaint_sources(key: str, value: Any) -> tuple[ComplaintSource, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of tables, got {_type_name(value)}")
    sources = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        data = _section(
            k, item, {"name": _str, "networks": _networks, "dkim_domains": _domains, "spamtrap": _bool}
        )
        if not data.get("name"):
            raise ConfigError(f"{k}.name", "missing")
        if not data.get("networks") and not data.get("dkim_domains"):
            raise ConfigError(k, "a source needs networks or dkim_domains: how else would a report be verified?")
        for j, net in enumerate(data.get("networks", ())):
            if net.prefixlen == 0:
                raise ConfigError(f"{k}.networks[{j}]", f"{net} covers every address: anyone could verify reports")
        sources.append(ComplaintSource(**data))
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(key, "source names must be unique")
    return tuple(sources)


def _address(key: str, value: Any) -> str:
    try:
        return normalize_address(_str(key, value))
    except InvalidAddress as exc:
        raise ConfigError(key, str(exc)) from exc


def _domains(key: str, value: Any) -> tuple[str, ...]:
    out = []
    for i, d in enumerate(_str_list(key, value)):
        try:
            out.append(d.strip().rstrip(".").encode("idna").decode("ascii").lower())
        except UnicodeError as exc:
            raise ConfigError(f"{key}[{i}]", f"invalid domain {d!r}") from exc
    return tuple(out)


def _ibans(key: str, value: Any) -> tuple[str, ...]:
    out = []
    for i, iban in enumerate(_str_list(key, value)):
        compact = "".join(iban.split()).upper()
        if not iban_valid(compact):
            raise ConfigError(f"{key}[{i}]", f"not a valid IBAN {iban!r}")
        out.append(compact)
    return tuple(out)


def _streams(key: str, value: Any) -> tuple[StreamConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of tables ([[{key}]]), got {_type_name(value)}")
    streams = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        data = _section(
            k,
            item,
            {
                "id": _str,
                "kind": _choice(MARKETING, TRANSACTIONAL),
                "topic": _str,
                "title": _str,
                "envelope_from": lambda kk, v: tuple(_address(f"{kk}[{j}]", x) for j, x in enumerate(_str_list(kk, v))),
            },
        )
        for required in ("id", "kind"):
            if required not in data:
                raise ConfigError(f"{k}.{required}", "missing")
        data.setdefault("topic", data["id"])
        data.setdefault("title", data["id"])
        streams.append(StreamConfig(**data))
    ids = [s.id for s in streams]
    if len(set(ids)) != len(ids):
        raise ConfigError(key, "stream ids must be unique")
    return tuple(streams)


def _page_asset_url(key: str, value: Any) -> str:
    text = _str(key, value)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("https", "http") or not rest or any(c.isspace() or c in "\"'<>" for c in text):
        raise ConfigError(key, f"expected an https:// (or http://) URL of an image, got {text!r}")
    return text


def _hex_colour(key: str, value: Any) -> str:
    text = _str(key, value)
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return text.lower()
    if re.fullmatch(r"#[0-9a-fA-F]{3}", text):
        return "#" + "".join(c * 2 for c in text[1:]).lower()
    raise ConfigError(key, f"expected a colour as #rrggbb, got {text!r}")


def _webhook_secret(key: str, value: Any) -> str:
    secret = resolve_secret(key, value)
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if not secret.startswith("whsec_") or len(raw) < 16:
        raise ConfigError(key, "expected whsec_ and at least 16 base64 bytes (or env:NAME holding one)")
    return secret


def _webhooks(key: str, value: Any) -> tuple[WebhookConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of tables ([[accounts.webhooks]]), got {_type_name(value)}")
    hooks = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        data = _section(k, item, {"url": _str, "secret": _webhook_secret, "events": _str_list})
        for name in ("url", "secret"):
            if name not in data:
                raise ConfigError(f"{k}.{name}", "missing")
        if not data["url"].startswith(("https://", "http://")):
            raise ConfigError(f"{k}.url", "expected an http:// or https:// URL")
        unknown = [t for t in data.get("events", ()) if t not in EVENT_TYPES]
        if unknown:
            raise ConfigError(f"{k}.events", f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})")
        hooks.append(WebhookConfig(data["url"], data["secret"], tuple(data.get("events") or DEFAULT_WEBHOOK_EVENTS)))
    if len({h.url for h in hooks}) != len(hooks):
        raise ConfigError(key, "webhook URLs must be unique within an account")
    return tuple(hooks)


def _confirmation(key: str, value: Any) -> ConfirmationTemplate:
    data = _section(key, value, {"from": _address, "subject": _str, "text": _str, "html": _str})
    if "from" in data:
        data["sender"] = data.pop("from")
    for body in ("text", "html"):
        if body in data and "{{confirm_url}}" not in data[body]:
            raise ConfigError(f"{key}.{body}", "must contain {{confirm_url}}, the link that confirms")
    return ConfirmationTemplate(**data)


def _accounts(key: str, value: Any) -> tuple[AccountConfig, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, f"expected a list of tables ([[accounts]]), got {_type_name(value)}")
    accounts = []
    for i, item in enumerate(value):
        k = f"{key}[{i}]"
        data = _section(
            k,
            item,
            {
                "id": _str,
                "name": _str,
                "password_hash": _hash,
                "domains": _domains,
                "trusted_networks": _networks,
                "legal_name": _str,
                "postal_address": _str,
                "registration_number": _str,
                "parent": _str,
                "abuse_contact": _address,
                "allow_adult": _bool,
                "default_stream": _str,
                "rate_limit_per_minute": _int,
                "streams": _streams,
                "bounce_forward": _address,
                "own_ibans": _ibans,
                "tracking_hosts": _domains,
                "api_keys": _admin_tokens,
                "webhooks": _webhooks,
                "confirmation": _confirmation,
                "parent_name": _str,
                "logo_url": _page_asset_url,
                "accent_color": _hex_colour,
            },
        )
        if "id" not in data:
            raise ConfigError(f"{k}.id", "missing")
        account = AccountConfig(**data)
        if not account.domains:
            raise ConfigError(f"{k}.domains", "an account needs at least one sender domain")
        if account.default_stream is not None and account.stream(account.default_stream) is None:
            raise ConfigError(f"{k}.default_stream", f"no stream {account.default_stream!r} in this account")
        labels = [t.label for t in account.api_keys]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{k}.api_keys", "key labels must be unique within an account (the audit log names them)")
        accounts.append(account)
    ids = [a.id for a in accounts]
    dupes = {x for x in ids if ids.count(x) > 1}
    if dupes:
        raise ConfigError(key, f"duplicate account id {sorted(dupes)[0]!r}")
    named: dict[str, str] = {}
    for i, account in enumerate(accounts):
        if account.parent_name and not account.parent:
            raise ConfigError(f"{key}[{i}].parent_name", "needs parent: it names the parent organisation")
        if account.parent and account.parent_name:
            if named.setdefault(account.parent, account.parent_name) != account.parent_name:
                raise ConfigError(
                    f"{key}[{i}].parent_name",
                    f"parent {account.parent!r} is already named {named[account.parent]!r} by another account",
                )
    parents = {a.parent for a in accounts if a.parent}
    clash = parents & set(ids)
    if clash:
        raise ConfigError(key, f"{sorted(clash)[0]!r} is both an account id and a parent scope")
    return tuple(accounts)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate; raises ConfigError naming the offending key."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError as exc:
        raise ConfigError("", f"config file {file} not found") from exc
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {file}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"config file {file} is not UTF-8") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{file}: invalid TOML: {exc}") from exc
    return build_config(data, file.resolve())


def build_config(data: Mapping[str, Any], path: Path) -> Config:
    base = path.parent
    readable = _readable(base)
    sections: dict[str, Callable[[str, Any], Any]] = {
        "smtp": lambda k, v: SmtpConfig(
            **_section(
                k,
                v,
                {
                    "listen": _listen,
                    "tls_listen": _listen,
                    "hostname": _str,
                    "tls_cert": readable,
                    "tls_key": readable,
                    "auth_require_tls": _bool,
                    "max_message_size": _positive_int,
                    "max_recipients": _positive_int,
                    "workers": _int,
                    "helper_process": _on_off_auto,
                    "idle_timeout": _positive_num,
                    "data_timeout": _positive_num,
                    "shutdown_grace": _num,
                    "max_connections": _positive_int,
                    "max_connections_per_ip": _positive_int,
                    "auth_max_failures": _int,
                    "auth_lockout_seconds": _num,
                },
            )
        ),
        "upstream": lambda k, v: UpstreamConfig(
            **_section(
                k,
                v,
                {
                    "host": _str,
                    "port": _int,
                    "starttls": _choice("off", "opportunistic", "required"),
                    "username": _str,
                    "password": resolve_secret,
                    "timeout": _positive_num,
                    "pool_size": _int,
                    "tls_verify": _bool,
                },
            )
        ),
        "store": lambda k, v: StoreConfig(
            **_section(k, v, {"url": _store_url(base), "timeout": _positive_num, "shared": _bool})
        ),
        "http": lambda k, v: HttpConfig(
            **_section(
                k,
                v,
                {
                    "admin_listen": _listen,
                    "public_listen": _listen,
                    "public_base_url": _str,
                    "admin_tokens": _admin_tokens,
                    "metrics_require_token": _bool,
                },
            )
        ),
        "unsubscribe": lambda k, v: UnsubscribeConfig(
            **_section(
                k,
                v,
                {"secrets": _secrets, "mailto_domain": _str, "placeholder": _str, "csa_complaints": _address},
            )
        ),
        "policy": lambda k, v: PolicyConfig(
            **_section(
                k,
                v,
                {
                    "profile": _choice(*PROFILE_NAMES),
                    "mode": _choice("enforce", "monitor"),
                    "actions": _actions,
                    "wordlists": _wordlists(base),
                },
            )
        ),
        "quarantine": lambda k, v: QuarantineConfig(**_section(k, v, {"retention_days": _num})),
        "outbox": lambda k, v: OutboxConfig(
            **_section(
                k,
                v,
                {
                    "retry_initial_seconds": _num,
                    "retry_max_seconds": _num,
                    "give_up_after_hours": _num,
                    "poll_seconds": _num,
                    "lease_seconds": _num,
                },
            )
        ),
        "complaints": lambda k, v: ComplaintsConfig(
            **_section(
                k,
                v,
                {
                    "ack_deadline_hours": _num,
                    "rate_threshold": _num,
                    "rate_min_complaints": _int,
                    "rate_window_hours": _num,
                    "sources": _complaint_sources,
                },
            )
        ),
        "bounces": lambda k, v: BouncesConfig(
            **_section(
                k, v, {"verp": _bool, "verp_transactional": _bool, "hard_limit": _int, "window_days": _num}
            )
        ),
        "malware": lambda k, v: MalwareConfig(
            **_section(
                k,
                v,
                {"clamd": _clamd_address, "clamd_unavailable": _choice("tempfail", "pass"), "clamd_timeout": _positive_num},
            )
        ),
        "dkim": lambda k, v: _section(k, v, {"keys": _dkim_keys(readable)}).get("keys", ()),
        "logging": lambda k, v: LoggingConfig(
            **_section(
                k,
                v,
                {"level": _choice("debug", "info", "warning", "error"), "log_recipients": _choice("hashed", "plain")},
            )
        ),
        "accounts": _accounts,
        "events": lambda k, v: EventsConfig(
            **_section(
                k,
                v,
                {
                    "retention_days": _num,
                    "webhook_timeout": _num,
                    "webhook_retry_initial_seconds": _num,
                    "webhook_retry_max_seconds": _num,
                    "webhook_give_up_hours": _num,
                    "webhook_poll_seconds": _num,
                },
            )
        ),
        "signups": lambda k, v: SignupsConfig(
            **_section(
                k,
                v,
                {"confirm_ttl_hours": _positive_num, "resend_after_hours": _num, "client_rate_per_hour": _positive_int},
            )
        ),
    }
    parsed = _section("", dict(data), sections)
    config = Config(
        path=path,
        smtp=parsed.get("smtp", SmtpConfig()),
        upstream=parsed.get("upstream", UpstreamConfig()),
        store=parsed.get("store", StoreConfig(url="sqlite:///" + str(base / "var" / "relay.db"))),
        http=parsed.get("http", HttpConfig()),
        unsubscribe=parsed.get("unsubscribe", UnsubscribeConfig()),
        policy=parsed.get("policy", PolicyConfig()),
        quarantine=parsed.get("quarantine", QuarantineConfig()),
        outbox=parsed.get("outbox", OutboxConfig()),
        complaints=parsed.get("complaints", ComplaintsConfig()),
        malware=parsed.get("malware", MalwareConfig()),
        dkim_keys=parsed.get("dkim", ()),
        logging=parsed.get("logging", LoggingConfig()),
        accounts=parsed.get("accounts", ()),
        events=parsed.get("events", EventsConfig()),
        bounces=parsed.get("bounces", BouncesConfig()),
        signups=parsed.get("signups", SignupsConfig()),
    )
    if (config.smtp.tls_cert is None) != (config.smtp.tls_key is None):
        raise ConfigError("smtp.tls_key" if config.smtp.tls_key is None else "smtp.tls_cert", "tls_cert and tls_key go together")
    if config.smtp.tls_listen is not None and config.smtp.tls_cert is None:
        raise ConfigError("smtp.tls_listen", "needs smtp.tls_cert and smtp.tls_key")
    if config.events.retention_days <= 0:
        raise ConfigError("events.retention_days", "must be more than 0")
    if config.smtp.workers < 1:
        raise ConfigError("smtp.workers", "must be at least 1")
    if config.store.shared and config.store.is_sqlite:
        raise ConfigError("store.shared", "only a PostgreSQL store can be shared by several instances")
    if config.outbox.lease_seconds <= 0:
        raise ConfigError("outbox.lease_seconds", "must be more than 0")
    if config.http.public_listen is not None and not config.unsubscribe.secrets:
        raise ConfigError("unsubscribe.secrets", "needed when http.public_listen is set")
    if not config.unsubscribe.secrets:
        # Without a secret no copy can carry List-Unsubscribe: marketing would leave without one.
        marketing = next(((a.id, s.id) for a in config.accounts for s in a.streams if s.kind == MARKETING), None)
        if marketing is not None:
            raise ConfigError(
                "unsubscribe.secrets",
                f"needed for marketing streams (account {marketing[0]!r} stream {marketing[1]!r}): "
                "every marketing copy carries a signed List-Unsubscribe",
            )
    return config


def config_warnings(config: Config) -> list[tuple[str, str]]:
    """(key, problem) for values the relay accepts but an operator should change: `check-config`
    prints them and `serve` logs them at start."""
    warnings = []
    marketing = next(((a.id, s.id) for a in config.accounts for s in a.streams if s.kind == MARKETING), None)
    scheme = config.http.public_base_url.partition(":")[0].lower()
    if marketing is not None and scheme != "https":
        warnings.append((
            "http.public_base_url",
            f"{config.http.public_base_url!r} is not https: marketing copies (account {marketing[0]!r} stream "
            f"{marketing[1]!r}) carry no HTTPS List-Unsubscribe URI, so mailbox providers will not offer "
            "RFC 8058 one-click unsubscribe",
        ))
    return warnings


def _clamd_address(key: str, value: Any) -> str:
    text = _str(key, value)
    kind, _, where = text.partition(":")
    if kind == "unix" and where.startswith("/"):
        return text
    if kind == "tcp" and where.rpartition(":")[2].isascii() and where.rpartition(":")[2].isdigit():
        return text
    raise ConfigError(key, f"expected unix:/path/to/clamd.ctl or tcp:host:port, got {text!r}")


def _dkim_keys(readable: Callable[[str, Any], Path]) -> Callable[[str, Any], tuple[DkimKeyConfig, ...]]:
    def parse(key: str, value: Any) -> tuple[DkimKeyConfig, ...]:
        if not isinstance(value, list):
            raise ConfigError(key, f"expected a list of tables ([[dkim.keys]]), got {_type_name(value)}")
        keys = []
        for i, item in enumerate(value):
            k = f"{key}[{i}]"
            data = _section(k, item, {"domain": _str, "selector": _str, "private_key": readable})
            for required in ("domain", "selector", "private_key"):
                if required not in data:
                    raise ConfigError(f"{k}.{required}", "missing")
            keys.append(DkimKeyConfig(data["domain"].lower(), data["selector"], data["private_key"]))
        return tuple(keys)

    return parse


def config_path_from(argument: str | None) -> Path:
    """-c FILE, else $CONSENT_RELAY_CONFIG, else ./config.toml; in a checkout without a config.toml,
    its config.example.toml (so the README's commands run as written from the checkout)."""
    chosen = argument or os.environ.get("CONSENT_RELAY_CONFIG")
    if chosen:
        return Path(chosen)
    if not Path(DEFAULT_CONFIG).exists() and Path(EXAMPLE_CONFIG).exists():
        return Path(EXAMPLE_CONFIG)
    return Path(DEFAULT_CONFIG)
