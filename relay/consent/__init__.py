"""Consent in and proof out: imports, proofs and the hosted double opt-in."""
