"""The one entry point, `consent-relay`, and its command groups."""
