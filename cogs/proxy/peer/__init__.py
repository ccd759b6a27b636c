"""The peer channel: proxies serve the indirect states they own to other proxies
(wire.py: the format and handshake; server.py and client.py: the two ends)."""

from __future__ import annotations

from cogs.proxy.peer.client import Owner, PeerClient
from cogs.proxy.peer.server import Handler, PeerServer
from cogs.proxy.peer.wire import MAX_FRAME, MAX_HEADER, VERSION, PeerRefusal

__all__ = ["MAX_FRAME", "MAX_HEADER", "VERSION", "Handler", "Owner", "PeerClient", "PeerRefusal", "PeerServer"]
