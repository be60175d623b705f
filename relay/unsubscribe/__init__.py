"""One-click unsubscribe: tokens, what they stand for, the list headers and the public pages."""
