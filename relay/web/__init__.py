"""The admin web UI at /ui/: server-rendered pages for quarantine review, audit, accounts and consent."""
