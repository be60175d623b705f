"""What the double opt-in tests share (docs/SPEC.md §18): a relay config with both listeners, a DKIM key and
an admin token; an API client; the confirmation link found in a mail at the upstream."""

from __future__ import annotations

import re
import subprocess
from email import message_from_bytes, policy
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from relay.config import Config
from relay.delivery.dkim import dkim_dns_record, load_dkim_key
from relay.passwords import hash_password
from tests.conftest import make_config

ADMIN_TOKEN = "signup-admin-token-0123456789abcdef"
ADMIN_HASH = hash_password(ADMIN_TOKEN)
PUBLIC_BASE = "https://confirm.test"
VERIFIER = Path(__file__).parents[1] / "relay" / "dkim_verify.pl"
SIGNUP: dict[str, Any] = {
    "account": "shop",
    "email": "anna@example.nl",
    "stream": "newsletter",
    "statement": "Ja, stuur mij de wekelijkse nieuwsbrief van Shop",
    "source_url": "https://shop.example/nieuwsbrief",
    "ip": "198.51.100.7",
    "frequency": "elke vrijdag",
    "language": "nl",
}


def signup_config(tmp_path: Path, upstream_port: int, **overrides: Any) -> Config:
    key = tmp_path / "dkim-rsa.pem"
    if not key.exists():
        key.write_bytes(
            rsa.generate_private_key(65537, 2048).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    data: dict[str, Any] = {
        "http": {
            "admin_listen": "127.0.0.1:0", "public_listen": "127.0.0.1:0", "public_base_url": PUBLIC_BASE,
            "admin_tokens": [ADMIN_HASH],
        },
        "unsubscribe": {"secrets": ["unsubscribe-secret-for-tests-0123456789"], "mailto_domain": "relay.test"},
        "dkim": {"keys": [{"domain": "shop.example", "selector": "s1", "private_key": str(key)}]},
    }
    data.update(overrides)
    return make_config(tmp_path, upstream_port, **data)


def dkim_records(config: Config) -> list[str]:
    key = config.dkim_keys[0]
    return [f"{key.selector}._domainkey.{key.domain} {dkim_dns_record(load_dkim_key(key.domain, key.selector, key.private_key))}\n"]


def perl_verify(raw: bytes, records: list[str], tmp_path: Path) -> str:
    """Mail::DKIM's overall verdict (pass, fail, …), keys from a local file instead of DNS."""
    keys = tmp_path / "dkim-keys.txt"
    keys.write_text("".join(records))
    done = subprocess.run(["perl", str(VERIFIER), str(keys)], input=raw, capture_output=True, timeout=60, check=True)
    return done.stdout.decode().splitlines()[-1].split()[1]


async def post_signup(admin_port: int, body: dict[str, Any], token: str = ADMIN_TOKEN) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"http://127.0.0.1:{admin_port}/api/signups", json=body, headers={"Authorization": f"Bearer {token}"}
        ) as response:
            return response.status, await response.json()


def text_part(raw: bytes) -> str:
    msg = message_from_bytes(raw)
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError("no text/plain part")


def confirm_link(raw: bytes) -> str:
    found = re.findall(re.escape(PUBLIC_BASE) + r"/c/[A-Za-z0-9_-]+", text_part(raw))
    assert found, "no confirmation link in the mail"
    return str(found[0])


def local_url(public_port: int, link: str) -> str:
    """The public listener's own address for a PUBLIC_BASE link."""
    return link.replace(PUBLIC_BASE, f"http://127.0.0.1:{public_port}")


def parsed(raw: bytes) -> Message:
    """Headers decoded (RFC 2047) as a mail program shows them."""
    return message_from_bytes(raw, policy=policy.default)


_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def cli_json(out: str) -> Any:
    """A CLI's JSON output, without the log lines an in-process relay printed meanwhile."""
    import json

    return json.loads("\n".join(line for line in out.splitlines() if not _LOG_LINE.match(line)))


def cli_text(out: str) -> str:
    return "\n".join(line for line in out.splitlines() if not _LOG_LINE.match(line))
