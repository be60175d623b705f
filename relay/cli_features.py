"""Registers the feature command groups (consent, suppression, quarantine, complaint, explain)."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

# Each module exposes register(sub, common). Listed here so cli.py stays one screen.
FEATURE_MODULES = (
    "relay.cli_explain", "relay.cli_consent", "relay.cli_quarantine", "relay.cli_complaint", "relay.cli_bounce",
    "relay.cli_events",
)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue  # feature not built yet
            raise
        module.register(sub, common)
