"""Rule modules, one per family of POLICY.md. Each exposes RULES."""
