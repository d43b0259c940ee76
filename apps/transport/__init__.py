"""A Socket.IO transport for uvicorn: python-socketio and python-engineio (the protocol logic) with
a send path, a WebSocket hand-off and protocol fixes of its own. It imports nothing from the
service that uses it. The contract, the upstream versions it was built on and every fix are in
``README.md`` beside this file.
"""

from apps.transport.asgi import SocketIOMiddleware
from apps.transport.engine_server import EngineServer
from apps.transport.engine_socket import EngineSocket
from apps.transport.framing import FramedStr
from apps.transport.managers import LocalManager, event_packet
from apps.transport.recovery import MemoryRecovery, Recovery, RecoveryUnavailable
from apps.transport.redis_manager import PacketPublisher, PublishError, RedisManager, redacted
from apps.transport.server import SocketServer
from apps.transport.serving import uvicorn_options

__all__ = [
    "EngineServer",
    "EngineSocket",
    "FramedStr",
    "LocalManager",
    "MemoryRecovery",
    "PacketPublisher",
    "PublishError",
    "Recovery",
    "RecoveryUnavailable",
    "RedisManager",
    "SocketIOMiddleware",
    "SocketServer",
    "event_packet",
    "redacted",
    "uvicorn_options",
]
