"""The I/O shell: SMTP, upstream, store, HTTP, metrics and CLI around the pure policy core."""
