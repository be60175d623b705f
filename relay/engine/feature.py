"""What a feature (unsubscribe, complaints, bounces, signups, malware scan…) may add to a relay
process: addresses of its own and the mail to them, facts about each message, HTTP routes,
background tasks. relay.assembly builds the features a config switches on and hands them to the
parts that use them; nothing is looked up by name or patched in afterwards."""

from __future__ import annotations

from typing import Any, Coroutine, Protocol, Sequence

from aiohttp import web

from policies.facts import ShellFacts
from policies.message import ParsedMessage
from relay import replies
from relay.engine.transaction import Transaction

Task = Coroutine[Any, Any, None]


class Feature(Protocol):
    """Every method has a default that adds nothing: a feature overrides what it brings."""

    # Names the feature in transactions (its own recipients), task names and logs.
    name: str

    def own_address(self, address: str) -> bool:
        """Whether `address` (lower-cased) is one of the relay's own addresses this feature answers."""
        return False

    async def handle_mail(self, txn: Transaction, addresses: Sequence[str], raw: bytes) -> str:
        """Mail to the addresses own_address claimed: the SMTP reply (never asked of a feature
        that claims none)."""
        return replies.NO_SUCH_ADDRESS

    async def message_facts(self, txn: Transaction, message: ParsedMessage, shell: ShellFacts) -> ShellFacts:
        """What this feature finds out about a message before the policy decides (end of DATA).
        Raises StoreUnavailable or ScannerUnavailable: the message is tempfailed."""
        return shell

    def add_admin_routes(self, app: web.Application) -> None:
        return None

    def add_public_routes(self, app: web.Application) -> None:
        return None

    def background_tasks(self) -> list[Task]:
        """Coroutines to run while the relay serves (only where it runs background work)."""
        return []

    async def close(self) -> None:
        return None
