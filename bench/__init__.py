"""Throughput benchmark: the same smtp-source load against direct, forwarder, Postfix and consent-relay."""
