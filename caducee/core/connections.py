"""Connection ceilings per client address, shared by the SMTP and IMAP listeners."""

from __future__ import annotations


class ClientConnections:
    """Concurrent connections per client address on one listener, with a ceiling."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def enter(self, client: str) -> bool:
        count = self._open.get(client, 0)
        if count >= self.limit:
            return False
        self._open[client] = count + 1
        return True

    def leave(self, client: str) -> None:
        count = self._open.get(client, 0) - 1
        if count > 0:
            self._open[client] = count
        else:
            self._open.pop(client, None)
