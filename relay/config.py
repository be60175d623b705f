"""Load and validate the one TOML config file (docs/SPEC.md §12). Every error names its key.

Each key is declared once, as a field of the tables below: its type, default, bounds, a `Check`
for what its type cannot say, and (`doc`) the description of the few keys config.example.toml
leaves out. msgspec converts the parsed TOML into these tables and refuses an unknown key, a
missing one, a wrong type or a value out of bounds with the key's path; the checks then run with
the same path, and a table's `checked()` relates its keys to each other. scripts/gen-docs.py reads
the same declarations for docs/configuration.md.
"""

import base64
import binascii
import functools
import hashlib
import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterable, Literal, Mapping, Union, get_args, get_origin

import msgspec
from msgspec import Meta

from policies.addresses import InvalidAddress, normalize_address
from policies.facts import MARKETING, AccountFacts, StreamFacts
from policies.findings import Action
from policies.profiles import PROFILE_NAMES
from policies.rules.content import iban_valid
from relay.errors import ConfigError
from relay.event_types import DEFAULT_WEBHOOK_EVENTS, EVENT_TYPES
from relay.passwords import is_password_hash

DEFAULT_CONFIG = "config.toml"
EXAMPLE_CONFIG = "config.example.toml"  # the checkout's, used when there is no config.toml


# --- how a key is declared -------------------------------------------------------------------


class Refused(ValueError):
    """A value a check refuses: `problem`, at the key plus `sub` (`[2]`, `.file`) when the check
    looked inside the value. A ValueError, so that msgspec puts the path on it in a decoding hook."""

    def __init__(self, problem: str, sub: str = "") -> None:
        super().__init__(problem)
        self.problem = problem
        self.sub = sub


class Check:
    """Field metadata (msgspec ignores it): `parse(value)`, or `parse(value, base)` with
    `relative=True` (base: the config file's directory), returns the value kept or raises Refused."""

    def __init__(self, parse: Callable[..., Any], *, relative: bool = False) -> None:
        self.parse = parse
        self.relative = relative

    def __call__(self, value: Any, base: Path) -> Any:
        return self.parse(value, base) if self.relative else self.parse(value)


def doc(text: str = "", default: str = "") -> Meta:
    """The reference's description of a key config.example.toml leaves out, and/or its default in words."""
    return Meta(description=text or None, extra={"default": default} if default else None)


Count = Annotated[int, Meta(ge=0)]
Limit = Annotated[int, Meta(ge=1)]  # 0 would not be "unlimited" but "nothing passes": refused
Amount = Annotated[float, Meta(ge=0)]
Timeout = Annotated[float, Meta(gt=0)]  # 0 would give up on every client, upstream or store call at once


class Listen:
    """HOST:PORT in the file; `[::1]:25` for IPv6. Not a dataclass: msgspec would read a dataclass
    from a table, and this comes from one string (see `_decode`)."""

    __slots__ = ("host", "port")

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Listen) and (self.host, self.port) == (other.host, other.port)

    def __hash__(self) -> int:
        return hash((self.host, self.port))

    def __repr__(self) -> str:
        return f"Listen({self.host!r}, {self.port})"

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Listen, (self.host, self.port))


class UnsubscribeSecret(bytes):
    """An unsubscribe signing key: the UTF-8 of the configured text (env:NAME resolved)."""


if TYPE_CHECKING:
    Network = ipaddress.IPv4Network | ipaddress.IPv6Network
else:
    Network = ipaddress._BaseNetwork  # msgspec decodes one custom type per union: both kinds derive from it


class Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table of the file: each field one key, its default the value when the key is left out."""

    def checked(self, key: str) -> Any:
        """After the keys' own checks: relate them, fill in derived defaults; raise ConfigError."""
        return self


# --- checks: each takes the value (already of its declared type) and raises Refused ----------


def _type_name(value: object) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list", dict: "a table"}.get(
        type(value), type(value).__name__
    )


def _env(text: str) -> str:
    """`env:NAME` reads the environment; anything else is taken literally."""
    if text.startswith("env:"):
        name = text[4:]
        if not name or name not in os.environ:
            raise Refused(f"environment variable {name or '(empty)'} is not set")
        return os.environ[name]
    return text


def _hash(value: str) -> str:
    text = _env(value)
    if not is_password_hash(text):
        raise Refused("expected a hash from `consent-relay hash-password` (scrypt$…), not a plain secret")
    return text


def _readable(path: Path, base: Path) -> Path:
    if not path.is_absolute():
        path = base / path
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise Refused(f"cannot read {path}: {exc.strerror or exc}") from exc
    return path


def _store_url(value: str, base: Path) -> str:
    url = _env(value)  # a PostgreSQL URL may carry a password: env:NAME
    if url.startswith("sqlite:////"):
        return url
    if url.startswith("sqlite:///"):
        return "sqlite:///" + str((base / url[len("sqlite:///"):]).resolve())
    if url.startswith(("postgresql://", "postgres://")):
        return url
    raise Refused("expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://…")


def sqlite_path(url: str) -> Path:
    """sqlite:////abs/path -> /abs/path (relative URLs were made absolute at load)."""
    return Path("/" + url[len("sqlite:///"):].lstrip("/"))


def _address(value: str) -> str:
    try:
        return normalize_address(value)
    except InvalidAddress as exc:
        raise Refused(str(exc)) from exc


def _address_or_empty(value: str) -> str:
    return _address(value) if value else value


def _domain(value: str) -> str:
    try:
        return value.strip().rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise Refused(f"invalid domain {value!r}") from exc


def _iban(value: str) -> str:
    compact = "".join(value.split()).upper()
    if not iban_valid(compact):
        raise Refused(f"not a valid IBAN {value!r}")
    return compact


# The broadest trusted network accepted (docs/SPEC.md §12): a trusted client sends without AUTH, so a
# network covering a large part of the internet makes the relay an open relay for that account.
# IPv4: /8 (10.0.0.0/8 is the broadest private range). IPv6: /32 (one provider's allocation),
# except inside the private fc00::/7. IPv4 embedded in IPv6 (::ffff:0:0/96, 64:ff9b::/96) is
# held to the IPv4 bound, since a dual-stack listener sees IPv4 clients that way.
MIN_TRUSTED_PREFIX_V4 = 8
MIN_TRUSTED_PREFIX_V6 = 32
_EMBEDDED_V4 = (ipaddress.IPv6Network("::ffff:0:0/96"), ipaddress.IPv6Network("64:ff9b::/96"))
_PRIVATE_V6 = ipaddress.IPv6Network("fc00::/7")


def _too_broad(net: Network) -> str | None:
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


def _trusted(net: Network) -> Network:
    bound = _too_broad(net)
    if bound is not None:
        raise Refused(
            f"{str(net)!r} is too broad: trusted clients send without AUTH, so this would make an open relay "
            f"(the broadest accepted is {bound}; list the application servers' networks)"
        )
    return net


def _actions(value: dict[str, Any]) -> dict[str, str]:
    from policies.registry import RULES_BY_ID

    valid = [a.value for a in Action]
    for rule_id, action in value.items():
        sub = f'."{rule_id}"'
        if rule_id not in RULES_BY_ID and not rule_id.startswith("account."):
            raise Refused("unknown rule id", sub)
        if not isinstance(action, str):
            raise Refused(f"expected a string, got {_type_name(action)}", sub)
        if action not in valid:
            raise Refused(f"expected one of {', '.join(valid)}, got {action!r}", sub)
        fixed = RULES_BY_ID[rule_id].fixed_action if rule_id in RULES_BY_ID else None
        if fixed is not None and action != fixed.value:
            raise Refused(f"must be {fixed.value!r}: nothing may grant relay permission (docs/POLICY.md)", sub)
    return dict(value)


def _str_list(value: Any, sub: str) -> list[str]:
    if not isinstance(value, list):
        raise Refused(f"expected a list of strings, got {_type_name(value)}", sub)
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Refused(f"expected a string, got {_type_name(item)}", f"{sub}[{i}]")
    return value


def _wordlists(value: dict[str, Any], base: Path) -> dict[str, tuple[str, ...]]:
    """`name = ["term", …]`, or `name = { file = "extra.txt", terms = [...] }` with one term a line
    (`#` comments) in a file relative to the config; only the shipped list names are accepted."""
    from policies.wordlists import parse_terms, shipped_names

    known = shipped_names()
    lists: dict[str, tuple[str, ...]] = {}
    for name, spec in value.items():
        sub = f".{name}"
        if name not in known:
            raise Refused(f"unknown word list (known: {', '.join(sorted(known))})", sub)
        if not isinstance(spec, dict):
            lists[name] = tuple(_str_list(spec, sub))
            continue
        for field in spec:
            if field not in ("file", "terms"):
                raise Refused("unknown key (known: file, terms)", f"{sub}.{field}")
        terms = list(_str_list(spec.get("terms", []), f"{sub}.terms"))
        if "file" in spec:
            if not isinstance(spec["file"], str):
                raise Refused(f"expected a string, got {_type_name(spec['file'])}", f"{sub}.file")
            path = Path(spec["file"])
            path = path if path.is_absolute() else base / path
            try:
                terms += parse_terms(path.read_bytes().decode("utf-8"))
            except OSError as exc:
                raise Refused(f"cannot read {path}: {exc.strerror or exc}", f"{sub}.file") from exc
            except UnicodeDecodeError as exc:
                raise Refused(f"{path} is not UTF-8", f"{sub}.file") from exc
        lists[name] = tuple(dict.fromkeys(terms))
    return lists


def _page_asset_url(text: str) -> str:
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("https", "http") or not rest or any(c.isspace() or c in "\"'<>" for c in text):
        raise Refused(f"expected an https:// (or http://) URL of an image, got {text!r}")
    return text


def _hex_colour(text: str) -> str:
    if re.fullmatch(r"#[0-9a-fA-F]{6}", text):
        return text.lower()
    if re.fullmatch(r"#[0-9a-fA-F]{3}", text):
        return "#" + "".join(c * 2 for c in text[1:]).lower()
    raise Refused(f"expected a colour as #rrggbb, got {text!r}")


def _webhook_secret(value: str) -> str:
    secret = _env(value)
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        raw = b""
    if not secret.startswith("whsec_") or len(raw) < 16:
        raise Refused("expected whsec_ and at least 16 base64 bytes (or env:NAME holding one)")
    return secret


def _http_url(text: str) -> str:
    if not text.startswith(("https://", "http://")):
        raise Refused("expected an http:// or https:// URL")
    return text


def _event_types(types: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise Refused(f"unknown event type {unknown[0]!r} (known: {', '.join(EVENT_TYPES)})")
    return types or DEFAULT_WEBHOOK_EVENTS


def _clamd_address(text: str) -> str:
    kind, _, where = text.partition(":")
    if kind == "unix" and where.startswith("/"):
        return text
    if kind == "tcp" and where.rpartition(":")[2].isascii() and where.rpartition(":")[2].isdigit():
        return text
    raise Refused(f"expected unix:/path/to/clamd.ctl or tcp:host:port, got {text!r}")


def _tokens(items: "tuple[str | AdminToken, ...]") -> "tuple[AdminToken, ...]":
    """A bare string is a hash; a token without a label is named by its place: token1, token2, …"""
    tokens = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            try:
                item = AdminToken(hash=_hash(item))
            except Refused as exc:
                raise Refused(exc.problem, f"[{i}]") from exc
        tokens.append(item if item.label else msgspec.structs.replace(item, label=f"token{i + 1}"))
    return tuple(tokens)


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity (taskset, a container's cpuset), which the
    workers inherit; the machine's count where the platform has no affinity."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _per_core(workers: int | str) -> int:
    return usable_cores() if workers == "auto" else int(workers)


Address = Annotated[str, Check(_address)]
Domains = tuple[Annotated[str, Check(_domain)], ...]
Secret = Annotated[str, Check(_env)]  # env:NAME reads the environment
Hash = Annotated[str, Check(_hash)]
ReadablePath = Annotated[Path, Check(_readable, relative=True)]


# --- the tables --------------------------------------------------------------------------------


class SmtpConfig(Table, frozen=True):
    listen: Listen = Listen("127.0.0.1", 2525)
    tls_listen: Listen | None = None
    hostname: str = "localhost"
    tls_cert: Annotated[ReadablePath | None, doc("PEM certificate chain: STARTTLS on `listen`, and `tls_listen`")] = None
    tls_key: Annotated[ReadablePath | None, doc("its PEM private key (tls_cert and tls_key go together)")] = None
    auth_require_tls: bool = True
    max_message_size: Limit = 26214400
    max_recipients: Limit = 1000
    # "auto": one worker per usable core, counted at load; the key then holds that number.
    workers: Annotated[Limit | Literal["auto"], Check(_per_core)] = "auto"
    # Policy evaluation and DKIM's private-key step in a helper process per worker: a spare core
    # for the CPU-bound part, the event loop kept for sessions. "auto": when workers leave a core
    # (with the default workers = "auto" they leave none).
    helper_process: bool | Literal["auto"] = "auto"
    idle_timeout: Timeout = 300  # per command, and per read while DATA flows (RFC 5321 4.5.3.2)
    data_timeout: Timeout = 3600  # the whole DATA phase, 354 to the final dot, however the data trickles
    shutdown_grace: Amount = 30
    max_connections: Limit = 1000
    max_connections_per_ip: Limit = 50
    auth_max_failures: Count = 5
    auth_lockout_seconds: Amount = 900

    @property
    def worker_count(self) -> int:
        """The worker processes: `workers` as resolved at load (a table built without the loader
        still says "auto")."""
        return self.workers if isinstance(self.workers, int) else usable_cores()


def helper_enabled(smtp: SmtpConfig) -> bool:
    """Whether each relay process gets a helper: "auto" when the workers leave a core free (with a
    worker per core, a helper only adds hand-offs: measured slower)."""
    if smtp.helper_process == "auto":
        return smtp.worker_count < usable_cores()
    return smtp.helper_process is True


class UpstreamConfig(Table, frozen=True):
    host: str = "127.0.0.1"
    port: Count = 25
    starttls: Literal["off", "opportunistic", "required"] = "opportunistic"
    username: str | None = None
    password: Secret | None = None
    timeout: Timeout = 30
    pool_size: Count = 8
    tls_verify: bool = True


class StoreConfig(Table, frozen=True):
    url: Annotated[str, Check(_store_url, relative=True), doc(default='`"sqlite:///var/relay.db"` (next to the config file)')] = (
        "sqlite:///var/relay.db"
    )
    timeout: Timeout = 5.0
    # True: this relay is one of several instances (hosts) of one PostgreSQL deployment. Otherwise
    # `serve` holds a lock and a second `serve` on the same store refuses to start.
    shared: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite://")


class AdminToken(Table, frozen=True, kw_only=True):
    label: Annotated[
        str, doc("a name for the token, shown in the audit log (who released, who deleted)", default="`token1`, `token2`, … by place")
    ] = ""
    hash: Annotated[Hash, doc("the token's hash from `consent-relay hash-password`")]


Tokens = Annotated[tuple[str | AdminToken, ...], Check(_tokens)]  # each a hash, or { label, hash }


class HttpConfig(Table, frozen=True):
    admin_listen: Listen | None = Listen("127.0.0.1", 8025)
    public_listen: Listen | None = None
    public_base_url: str = "http://127.0.0.1:8080"
    admin_tokens: Tokens = ()
    metrics_require_token: bool = False


class UnsubscribeConfig(Table, frozen=True):
    secrets: tuple[UnsubscribeSecret, ...] = ()
    mailto_domain: str = "localhost"
    placeholder: str = "{{unsubscribe_url}}"
    csa_complaints: Address | None = None


class PolicyConfig(Table, frozen=True):
    profile: Literal[tuple(PROFILE_NAMES)] = "strict"  # type: ignore[valid-type]
    mode: Literal["enforce", "monitor"] = "enforce"
    # Free tables (rule ids, word list names): their checks name the inner keys.
    actions: Annotated[Mapping[str, Any], Check(_actions), doc("per-rule action overrides: the `[policy.actions]` table below")] = {}
    wordlists: Annotated[
        Mapping[str, Any],
        Check(_wordlists, relative=True),
        doc("extra terms for the shipped word lists: the `[policy.wordlists]` table below"),
    ] = {}


class QuarantineConfig(Table, frozen=True):
    retention_days: Amount = 30


class OutboxConfig(Table, frozen=True):
    retry_initial_seconds: Amount = 60
    retry_max_seconds: Amount = 3600
    give_up_after_hours: Amount = 120
    poll_seconds: Annotated[Amount, doc("how often the outbox looks for copies due for a retry")] = 1.0
    # A claimed copy is leased for this long, renewed every third of it while its holder works;
    # after a crash its copies wait at most this long for another process.
    lease_seconds: Timeout = 15.0
    # After the upstream deferred 10 attempts in a row, one copy is tried this often regardless of
    # its back-off; once one is taken, every queued copy is sent without waiting out its back-off.
    probe_seconds: Annotated[Amount, doc("how often the outbox tries one copy early while the upstream is away")] = 5.0


class ComplaintSource(Table, frozen=True):
    """A feedback loop the operator signed up for (docs/SPEC.md §16): its reports are verified."""

    name: Annotated[str, doc("a name for the source, shown with its reports")]
    networks: Annotated[tuple[Network, ...], doc("a report from a client inside these networks is verified")] = ()
    dkim_domains: Annotated[Domains, doc("a report DKIM-signed by one of these domains is verified")] = ()
    spamtrap: Annotated[bool, doc("true: every abuse report from it is a spam-trap hit (pauses the account at once)")] = False

    def covers(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def checked(self, key: str) -> "ComplaintSource":
        if not self.name:
            raise ConfigError(f"{key}.name", "missing")
        if not self.networks and not self.dkim_domains:
            raise ConfigError(key, "a source needs networks or dkim_domains: how else would a report be verified?")
        for j, net in enumerate(self.networks):
            if net.prefixlen == 0:
                raise ConfigError(f"{key}.networks[{j}]", f"{net} covers every address: anyone could verify reports")
        return self


class ComplaintsConfig(Table, frozen=True):
    ack_deadline_hours: Amount = 24
    rate_threshold: Amount = 0.003
    rate_min_complaints: Count = 3
    rate_window_hours: Amount = 24
    sources: Annotated[
        tuple[ComplaintSource, ...],
        doc("the feedback loops you signed up for: `[complaints] sources` below (docs/feedback-loop.md)"),
    ] = ()

    def checked(self, key: str) -> "ComplaintsConfig":
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ConfigError(f"{key}.sources", "source names must be unique")
        return self

    def source_for_client(self, ip: str) -> ComplaintSource | None:
        return next((s for s in self.sources if s.covers(ip)), None)

    def source_for_dkim(self, domains: Iterable[str]) -> ComplaintSource | None:
        signed = {d.lower().rstrip(".") for d in domains}
        return next((s for s in self.sources if signed & set(s.dkim_domains)), None)


class BouncesConfig(Table, frozen=True):
    """docs/SPEC.md §15: VERP envelope senders and what a DSN does."""

    verp: bool = True  # marketing copies get bounce+ID@mailto_domain
    verp_transactional: Annotated[
        bool, doc("transactional copies get a VERP envelope sender too (one upstream transaction per recipient)")
    ] = False
    hard_limit: Count = 3  # other permanent failures within window_days before suppression.bounced
    window_days: Annotated[Amount, doc("the window of hard_limit")] = 30


class SignupsConfig(Table, frozen=True):
    """[signups] (docs/SPEC.md §18): hosted double opt-in."""

    confirm_ttl_hours: Timeout = 72
    resend_after_hours: Amount = 24
    client_rate_per_hour: Limit = 10  # signups per client address (the form filler's IP) and account


class ConfirmationTemplate(Table, frozen=True):
    """[[accounts]] confirmation: the account's own confirmation mail; {{confirm_url}} is the link."""

    sender: Annotated[str, Check(_address_or_empty)] = msgspec.field(default="", name="from")
    subject: str = ""
    text: str = ""
    html: str = ""

    def checked(self, key: str) -> "ConfirmationTemplate":
        for body in ("text", "html"):
            value = getattr(self, body)
            if value and "{{confirm_url}}" not in value:
                raise ConfigError(f"{key}.{body}", "must contain {{confirm_url}}, the link that confirms")
        return self


class MalwareConfig(Table, frozen=True):
    clamd: Annotated[str, Check(_clamd_address)] | None = None
    clamd_unavailable: Literal["tempfail", "pass"] = "tempfail"
    clamd_timeout: Annotated[Timeout, doc("seconds for one clamd scan before it counts as unavailable")] = 30


class DkimKeyConfig(Table, frozen=True):
    domain: Annotated[str, Check(str.lower)]
    selector: str
    private_key: ReadablePath


class DkimConfig(Table, frozen=True):
    keys: tuple[DkimKeyConfig, ...] = ()


class LoggingConfig(Table, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    log_recipients: Literal["hashed", "plain"] = "hashed"


class StreamConfig(Table, frozen=True, dict=True):  # dict: room for `facts`, made once
    id: str
    kind: Literal["marketing", "transactional"]
    topic: Annotated[str, doc(default="the stream's id")] = ""  # the loader fills in the id
    envelope_from: tuple[Address, ...] = ()
    title: str = ""  # the topic in words on the recipient's pages; the loader fills in the id

    def checked(self, key: str) -> "StreamConfig":
        return msgspec.structs.replace(self, topic=self.topic or self.id, title=self.title or self.id)

    @property
    def display_title(self) -> str:
        return self.title or self.id

    @functools.cached_property
    def facts(self) -> StreamFacts:
        """The stream as the rules see it: made once per config object (every MAIL FROM and DATA asks)."""
        return StreamFacts(self.id, self.kind, self.topic)


class EventsConfig(Table, frozen=True):
    retention_days: Timeout = 30.0  # the event feed keeps this long (docs/SPEC.md §17)
    webhook_timeout: Annotated[Amount, doc("seconds for one webhook POST")] = 10.0
    webhook_concurrency: Limit = 4  # POSTs in flight at once to one endpoint (1: strictly one after another)
    webhook_retry_initial_seconds: Annotated[
        Amount, doc("the first retry of a failed webhook POST; the back-off doubles from here, with jitter")
    ] = 5.0
    webhook_retry_max_seconds: Annotated[Amount, doc("the back-off of webhook retries stops doubling here")] = 3600.0
    webhook_give_up_hours: Amount = 24.0  # an endpoint failing this long is disabled
    webhook_poll_seconds: Annotated[Amount, doc("how often due webhook deliveries are looked for")] = 1.0


class WebhookConfig(Table, frozen=True):
    url: Annotated[str, Check(_http_url)]
    secret: Annotated[str, Check(_webhook_secret)]  # whsec_BASE64 (Standard Webhooks)
    events: Annotated[tuple[str, ...], Check(_event_types), doc(default="every type but `delivered`")] = ()

    @property
    def endpoint(self) -> str:
        """A stable name for the endpoint's delivery state: its URL may move in the list."""
        return hashlib.sha256(self.url.encode("utf-8")).hexdigest()[:16]


class AccountConfig(Table, frozen=True, dict=True):  # dict: room for marketing_before_data, made once
    id: str
    name: str = ""
    password_hash: Hash | None = None
    domains: Annotated[Domains, doc(default="*required* (at least one)")] = ()
    trusted_networks: tuple[Annotated[Network, Check(_trusted)], ...] = ()
    legal_name: str = ""
    postal_address: str = ""
    registration_number: str = ""
    parent: str | None = None
    abuse_contact: Address | None = None
    allow_adult: bool = False
    default_stream: str | None = None
    rate_limit_per_minute: Count = 0
    bounce_forward: Address | None = None  # docs/SPEC.md §15: DSNs about this account's mail are forwarded here
    own_ibans: tuple[Annotated[str, Check(_iban)], ...] = ()
    tracking_hosts: Domains = ()
    api_keys: Tokens = ()  # bearer keys acting for this account only (docs/SPEC.md §17)
    webhooks: Annotated[
        tuple[WebhookConfig, ...],
        doc("the account's webhook endpoints: `[[accounts.webhooks]]` below (docs/events-and-webhooks.md)"),
    ] = ()
    streams: Annotated[tuple[StreamConfig, ...], doc("the account's streams: `[[accounts.streams]]` below")] = ()
    confirmation: Annotated[
        ConfirmationTemplate | None,
        doc(
            "the double opt-in mail: `{ from, subject, text, html }`, text and html with `{{confirm_url}}`; "
            "default: built-in nl/en/de (docs/double-opt-in.md)"
        ),
    ] = None
    # The recipient's pages (docs/SPEC.md §6): the parent organisation's name, the account's logo and colour.
    parent_name: str = ""
    logo_url: Annotated[str, Check(_page_asset_url)] | None = None
    accent_color: Annotated[str, Check(_hex_colour)] | None = None

    def checked(self, key: str) -> "AccountConfig":
        if not self.domains:
            raise ConfigError(f"{key}.domains", "an account needs at least one sender domain")
        ids = [s.id for s in self.streams]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{key}.streams", "stream ids must be unique")
        if self.default_stream is not None and self.stream(self.default_stream) is None:
            raise ConfigError(f"{key}.default_stream", f"no stream {self.default_stream!r} in this account")
        labels = [t.label for t in self.api_keys]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{key}.api_keys", "key labels must be unique within an account (the audit log names them)")
        if len({h.url for h in self.webhooks}) != len(self.webhooks):
            raise ConfigError(f"{key}.webhooks", "webhook URLs must be unique within an account")
        if self.parent_name and not self.parent:
            raise ConfigError(f"{key}.parent_name", "needs parent: it names the parent organisation")
        return self

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

    @functools.cached_property
    def marketing_before_data(self) -> StreamFacts | None:
        """The stream a RCPT's consent is checked against before DATA names one: when every stream is
        marketing, consent rules apply whatever the header will say, so the default stream, its topic
        "*" (not known yet) when there are several. None otherwise. Made once per config object."""
        if not self.all_marketing:
            return None
        default = self.stream(self.default_stream or "") or self.streams[0]
        return StreamFacts(default.id, default.kind, "*" if len(self.streams) > 1 else default.topic)

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


class Config(Table, frozen=True):
    """The file's tables, in the order of docs/configuration.md; `path` is where it was read from."""

    smtp: SmtpConfig = SmtpConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    store: StoreConfig = StoreConfig()
    http: HttpConfig = HttpConfig()
    unsubscribe: UnsubscribeConfig = UnsubscribeConfig()
    policy: PolicyConfig = PolicyConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    outbox: OutboxConfig = OutboxConfig()
    complaints: ComplaintsConfig = ComplaintsConfig()
    bounces: BouncesConfig = BouncesConfig()
    events: EventsConfig = EventsConfig()
    signups: SignupsConfig = SignupsConfig()
    malware: MalwareConfig = MalwareConfig()
    logging: LoggingConfig = LoggingConfig()
    dkim: DkimConfig = DkimConfig()
    accounts: tuple[AccountConfig, ...] = ()
    path: Path = Path(DEFAULT_CONFIG)  # where the file was read from: not a key of it

    @property
    def dkim_keys(self) -> tuple[DkimKeyConfig, ...]:
        return self.dkim.keys

    def account(self, account_id: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    def account_trusting(self, ip: str) -> AccountConfig | None:
        return next((a for a in self.accounts if a.trusts(ip)), None)

    def accounts_under(self, scope: str) -> tuple[AccountConfig, ...]:
        return tuple(a for a in self.accounts if a.id == scope or a.parent == scope)

    def checked(self, key: str) -> "Config":
        self._check_accounts()
        smtp = self.smtp
        if (smtp.tls_cert is None) != (smtp.tls_key is None):
            raise ConfigError("smtp.tls_key" if smtp.tls_key is None else "smtp.tls_cert", "tls_cert and tls_key go together")
        if smtp.tls_listen is not None and smtp.tls_cert is None:
            raise ConfigError("smtp.tls_listen", "needs smtp.tls_cert and smtp.tls_key")
        if self.store.shared and self.store.is_sqlite:
            raise ConfigError("store.shared", "only a PostgreSQL store can be shared by several instances")
        if self.http.public_listen is not None and not self.unsubscribe.secrets:
            raise ConfigError("unsubscribe.secrets", "needed when http.public_listen is set")
        if not self.unsubscribe.secrets:
            # Without a secret no copy can carry List-Unsubscribe: marketing would leave without one.
            marketing = next(((a.id, s.id) for a in self.accounts for s in a.streams if s.kind == MARKETING), None)
            if marketing is not None:
                raise ConfigError(
                    "unsubscribe.secrets",
                    f"needed for marketing streams (account {marketing[0]!r} stream {marketing[1]!r}): "
                    "every marketing copy carries a signed List-Unsubscribe",
                )
        return self

    def _check_accounts(self) -> None:
        ids = [a.id for a in self.accounts]
        dupes = {x for x in ids if ids.count(x) > 1}
        if dupes:
            raise ConfigError("accounts", f"duplicate account id {sorted(dupes)[0]!r}")
        named: dict[str, str] = {}
        for i, account in enumerate(self.accounts):
            if account.parent and account.parent_name:
                if named.setdefault(account.parent, account.parent_name) != account.parent_name:
                    raise ConfigError(
                        f"accounts[{i}].parent_name",
                        f"parent {account.parent!r} is already named {named[account.parent]!r} by another account",
                    )
        clash = {a.parent for a in self.accounts if a.parent} & set(ids)
        if clash:
            raise ConfigError("accounts", f"{sorted(clash)[0]!r} is both an account id and a parent scope")


# --- loading ----------------------------------------------------------------------------------


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
    """The parsed TOML of the file at `path` (relative paths are relative to its directory) -> Config."""
    if "path" in data:
        raise ConfigError("path", f"unknown key (known: {', '.join(known_keys(Config))})")
    try:
        config = msgspec.convert(dict(data), Config, strict=True, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        raise _translate(str(exc)) from None
    config = _finish(config, Config, "", path.parent)
    return msgspec.structs.replace(config, path=path)


def known_keys(table: type[Table]) -> list[str]:
    """The keys of one table as the file spells them, sorted."""
    return sorted(spelled for name, spelled in zip(table.__struct_fields__, table.__struct_encode_fields__) if (table, name) != (Config, "path"))


def _decode(kind: type, value: Any) -> Any:
    """Values msgspec has no type for, from the TOML string; msgspec adds the key to a refusal."""
    if not isinstance(value, str):
        raise Refused(f"expected a string, got {_type_name(value)}")
    if kind is Listen:
        host, sep, port = value.rpartition(":")
        host = host.strip("[]")
        if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
            raise Refused(f"expected HOST:PORT, got {value!r}")
        return Listen(host, int(port))
    if kind is Network:
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            raise Refused(f"not a network: {value!r}") from exc
    if kind is Path:
        return Path(value)
    if kind is UnsubscribeSecret:
        secret = _env(value)
        if len(secret) < 16:
            raise Refused("an unsubscribe secret needs at least 16 characters")
        return UnsubscribeSecret(secret.encode("utf-8"))
    raise NotImplementedError(kind)


def _finish(value: Any, kind: Any, key: str, base: Path) -> Any:
    """Run the checks of `kind`'s declaration on a converted `value`, innermost first, naming `key`."""
    checks: list[Check] = []
    while get_origin(kind) is Annotated:
        kind, *meta = get_args(kind)
        checks = [m for m in meta if isinstance(m, Check)] + checks
    if value is None:
        return None
    if isinstance(value, Table):
        types, changes = field_types(type(value)), {}
        for name, spelled in zip(value.__struct_fields__, value.__struct_encode_fields__):
            old = getattr(value, name)
            new = _finish(old, types[name], f"{key}.{spelled}" if key else spelled, base)
            if new is not old:
                changes[name] = new
        value = msgspec.structs.replace(value, **changes).checked(key)
    elif isinstance(value, tuple) and get_origin(kind) is tuple:
        value = tuple(_finish(v, get_args(kind)[0], f"{key}[{i}]", base) for i, v in enumerate(value))
    elif get_origin(kind) in (Union, type(int | None)):
        arms = [a for a in get_args(kind) if a is not type(None)]
        if len(arms) == 1:
            value = _finish(value, arms[0], key, base)
    for check in checks:
        try:
            value = check(value, base)
        except Refused as exc:
            raise ConfigError(key + exc.sub, exc.problem) from exc
    return value


_HINTS: dict[type, dict[str, Any]] = {}


def field_types(table: type) -> dict[str, Any]:
    """The declared type of each field, with its Annotated metadata (scripts/gen-docs.py reads them too)."""
    if table not in _HINTS:
        _HINTS[table] = {name: kind for base in reversed(table.__mro__) for name, kind in vars(base).get("__annotations__", {}).items()}
    return _HINTS[table]


_BOUNDS = {
    ">= 0": "must not be negative",
    ">= 1": "must be at least 1 (0 would refuse every transaction)",
    "> 0": "must be greater than 0",
}
_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false", "array": "a list", "object": "a table"}


def _translate(message: str) -> ConfigError:
    """msgspec's refusal -> ConfigError(key, problem) in the words of the rest of the loader."""
    match = re.fullmatch(r"(.*?)(?: - at `\$\.?(.*)`)?", message, re.S)
    assert match is not None
    problem, key = match[1], match[2] or ""
    kind = _type_at(key)
    if wanted := _number_or_words(kind):  # `workers`: one clear line whichever way the value is wrong
        if found := re.fullmatch(r"Expected `\w+` (>=? [\d.]+)", problem):
            return ConfigError(key, f"expected {wanted}, got a number {found[1].replace('>=', '<').replace('>', '<=')}")
        if found := re.fullmatch(r"Invalid enum value (.*)", problem):
            return ConfigError(key, f"expected {wanted}, got {found[1]}")
        if found := re.fullmatch(r"Expected `.*`, got `(\w+)`", problem):
            got = "a boolean" if found[1] == "bool" else _NAMES.get(found[1], found[1])
            return ConfigError(key, f"expected {wanted}, got {got}")
    if found := re.fullmatch(r"Object contains unknown field `(.*)`", problem):
        tables = [k for k in (get_args(kind) or (kind,)) if isinstance(k, type) and issubclass(k, Table)]
        known = known_keys(tables[0]) if tables else []
        return ConfigError(f"{key}.{found[1]}" if key else found[1], f"unknown key (known: {', '.join(known)})")
    if found := re.fullmatch(r"Object missing required field `(.*)`", problem):
        return ConfigError(f"{key}.{found[1]}" if key else found[1], "missing")
    if found := re.fullmatch(r"Expected `(\w+)` (>=? [\d.]+)", problem):
        return ConfigError(key, _BOUNDS.get(found[2].removesuffix(".0"), f"must be {found[2]}"))
    if found := re.fullmatch(r"Expected `(.*)`, got `(\w+)`", problem):
        wanted = [_NAMES.get(w, w) for w in found[1].split(" | ") if w != "null"]
        if wanted == ["a list"] and get_origin(kind) is tuple:
            item = _plain(get_args(kind)[0])
            wanted = ["a list of strings" if item is str else "a list of tables" if isinstance(item, type) and issubclass(item, Table) else "a list"]
        return ConfigError(key, f"expected {' or '.join(wanted)}, got {_NAMES.get(found[2], found[2])}")
    if found := re.fullmatch(r"Invalid enum value (.*)", problem):
        choices = _choices(kind)
        if bool in choices:  # true, false or a word: `helper_process`
            words = ", ".join(f'"{c}"' for c in choices if c is not bool)
            return ConfigError(key, f"expected true, false or {words}, got {found[1]}")
        return ConfigError(key, f"expected one of {', '.join(map(str, choices))}, got {found[1]}")
    return ConfigError(key, problem)


def _number_or_words(kind: Any) -> str:
    """`an integer ≥ 1 or "auto"` for a key that takes a number or a word, else ""."""
    if get_origin(kind) not in (Union, type(int | None)):
        return ""
    numbers = [arm for arm in get_args(kind) if _plain(arm) is int]
    words = [c for arm in get_args(kind) for c in _choices(arm) if isinstance(c, str)]
    if not numbers or not words:
        return ""
    least = next((m.ge for m in get_args(numbers[0])[1:] if isinstance(m, Meta) and m.ge is not None), None)
    number = "an integer" if least is None else f"an integer ≥ {least}"
    return " or ".join([number, *(f'"{w}"' for w in words)])


def _plain(kind: Any) -> Any:
    """The type without Annotated metadata and without `| None`."""
    while True:
        if get_origin(kind) is Annotated:
            kind = get_args(kind)[0]
        elif get_origin(kind) in (Union, type(int | None)) and type(None) in get_args(kind):
            arms = [a for a in get_args(kind) if a is not type(None)]
            kind = arms[0] if len(arms) == 1 else Union[tuple(arms)]
        else:
            return kind


def _choices(kind: Any) -> list[Any]:
    """The values of a Literal (and `bool` when the union takes true and false too)."""
    kind = _plain(kind)
    if get_origin(kind) is Literal:
        return list(get_args(kind))
    out: list[Any] = []
    for arm in get_args(kind):
        out += [bool] if arm is bool else _choices(arm)
    return out


def _type_at(key: str) -> Any:
    """The declared type of the key `a.b[0].c` (Config's for the file itself)."""
    kind: Any = Config
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+|\.\.\.)\]", key):
        kind = _plain(kind)
        if name and isinstance(kind, type) and issubclass(kind, Table):
            by_name = dict(zip(kind.__struct_encode_fields__, kind.__struct_fields__))
            kind = field_types(kind).get(by_name.get(name, ""), Any)
        elif index and get_origin(kind) is tuple:
            kind = get_args(kind)[0]
        else:
            return Any
    return _plain(kind)


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


def config_path_from(argument: str | None) -> Path:
    """-c FILE, else $CONSENT_RELAY_CONFIG, else ./config.toml; in a checkout without a config.toml,
    its config.example.toml (so the README's commands run as written from the checkout)."""
    chosen = argument or os.environ.get("CONSENT_RELAY_CONFIG")
    if chosen:
        return Path(chosen)
    if not Path(DEFAULT_CONFIG).exists() and Path(EXAMPLE_CONFIG).exists():
        return Path(EXAMPLE_CONFIG)
    return Path(DEFAULT_CONFIG)
