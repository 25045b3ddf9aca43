"""A small ASGI 3 HTTP/1.1 server on asyncio (uvloop's event loop when installed) and httptools, with
zero-copy file responses (os.sendfile).

Generic: it knows nothing of Shipyard. `serve(ServerConfig(app="module:attribute", ...))` binds the socket
and supervises the worker processes (shipyard.server.worker); protocol.py and cycle.py speak HTTP.
"""

from shipyard.server.config import ServerConfig
from shipyard.server.supervisor import serve

__all__ = ["ServerConfig", "serve"]
