"""Quarantine review and release, shared by the CLI, the API and the web UI."""
