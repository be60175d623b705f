"""A campaign's body walked once: the body fields (policies.message.ParsedMessage.body_fields) of the
last few message bodies, for the next message with the same body (policies.message.body_key)."""

from __future__ import annotations

from policies.message import BodyFields, BodyKey, ParsedMessage, body_key


class BodyWalks:
    """The text, links and attachments the content rules read come from a walk of the body's MIME
    parts and an HTML-to-text pass (a tenth of a message's work on the loop at one recipient). A
    campaign sends the same body in message after message, often one recipient a transaction:
    each distinct body is walked once while it stays among the last MAX_ENTRIES. Only messages up to
    MAX_BODY bytes are kept (a kept body holds a few times its size)."""

    MAX_BODY = 128 * 1024
    MAX_ENTRIES = 8

    def __init__(self) -> None:
        self._fields: dict[BodyKey, BodyFields] = {}

    def lend(self, raw: bytes, message: ParsedMessage) -> BodyKey | None:
        """Give `message` the fields of an earlier message with its body, if kept; the key for
        keep(), None when a message this large is not kept."""
        if len(raw) > self.MAX_BODY:
            return None
        key = body_key(raw)
        fields = self._fields.pop(key, None)
        if fields is not None:
            message.adopt_body_fields(fields)
            self._fields[key] = fields  # the most recently used last
        return key

    def keep(self, key: BodyKey | None, message: ParsedMessage) -> None:
        """Keep what the rules made of `message`'s body (nothing when none read it: a helper process
        evaluated it, or no rule needed the body)."""
        if key is None:
            return
        fields = message.body_fields()
        if fields is None:
            return
        self._fields.pop(key, None)
        if len(self._fields) >= self.MAX_ENTRIES:
            del self._fields[next(iter(self._fields))]  # the least recently used
        self._fields[key] = fields
