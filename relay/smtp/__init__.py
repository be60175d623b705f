"""The SMTP edge: aiosmtpd's protocol with limits, the session handler, the capture sink for trying the relay out."""
