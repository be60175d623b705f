"""Account events and the signed webhooks that carry them."""
