"""The policy core: rules, findings, profiles and the engine. Pure: no I/O, no clock."""
