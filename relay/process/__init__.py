"""The process around the relay: supervisor, listening sockets, the state lock, memory."""
