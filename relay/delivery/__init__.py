"""Carrying copies upstream, never losing one: personalisation, DKIM canonicalisation, the upstream client, the outbox."""
