"""The signature of our webhooks, checked by the reference library and by the two verification
examples of docs/events-and-webhooks.md (run as written: Python in-process, the Node.js one by node)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from relay.events.webhooks import signed_request

GUIDE = Path(__file__).parents[3] / "docs" / "events-and-webhooks.md"
SECRET = "whsec_" + base64.b64encode(b"a-secret-of-twenty-four!").decode()


def signed() -> tuple[bytes, dict[str, str]]:
    return signed_request(SECRET, "evt_shop_7", {"id": "evt_shop_7", "type": "unsubscribed", "recipient": "ä@example.nl"}, time.time())


def code_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(encoding="utf-8"), re.S)
    return next(b for b in blocks if containing in b)


def test_the_reference_library_accepts_our_signature_and_refuses_a_changed_body() -> None:
    body, headers = signed()
    assert Webhook(SECRET).verify(body, headers)["recipient"] == "ä@example.nl"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"shop", b"shoq"), headers)


def test_the_guides_python_example_verifies() -> None:
    namespace: dict[str, object] = {}
    exec(code_block("python", "def verify("), namespace)  # noqa: S102 - the guide's own example
    verify = namespace["verify"]
    body, headers = signed()
    assert verify(SECRET, headers, body) is True  # type: ignore[operator]
    assert verify(SECRET, headers, body + b" ") is False  # type: ignore[operator]


def test_the_guides_node_example_verifies() -> None:
    node = shutil.which("node")
    assert node, "node is needed for the guide's Node.js example (Debian package nodejs)"
    example = code_block("js", "function verify(").split("// Express:")[0]
    script = example + (
        'const [secret, headers, body] = JSON.parse(require("fs").readFileSync(0));\n'
        'const raw = Buffer.from(body, "base64");\n'
        'console.log(JSON.stringify([verify(secret, headers, raw), verify(secret, headers, Buffer.concat([raw, Buffer.from(" ")]))]));\n'
    )
    body, headers = signed()
    result = subprocess.run(
        [node, "-e", script], input=json.dumps([SECRET, headers, base64.b64encode(body).decode()]),
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [True, False]
