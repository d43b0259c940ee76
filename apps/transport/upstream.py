"""What this package is built on: the upstream versions, and every upstream function it replaces,
extends, copied, or relies on the inside of.

``drift()`` names each difference between this table and what is installed: a version that is not
the one built for, or an upstream function whose source has changed (so its override here must be
read again). ``apps/transport/tests/test_upstream.py`` fails on any of them. After re-reading the
code a changed function touches, update its digest here (``python -m apps.transport.upstream``
prints the current table).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from importlib.metadata import version

#: The distributions this package was built and tested on.
BUILT_FOR = {
    "python-socketio": "5.18.1",
    "python-engineio": "4.15.1",
    "uvicorn": "0.54.0",
    "websockets": "17.4",
    "httptools": "0.9.0",
    "redis": "8.1.0",
}


@dataclass(frozen=True)
class Hook:
    #: ``module:qualified.name`` of the upstream function (or class).
    target: str
    #: The first 16 hex digits of the SHA-256 of its source when this package was built on it.
    digest: str
    #: Where this package depends on it (a module of this package, and the name there).
    here: str
    #: replaced / extended / copied / relied on, and what for.
    how: str


HOOKS = [
    Hook(
        "engineio.base_server:BaseServer.__init__",
        "a06b17502fbd9646",
        "engine_server.EngineServer.__init__",
        "relied on: the _async table, monitor_clients, the attributes EngineServer reads",
    ),
    Hook(
        "engineio.base_server:BaseServer._ok",
        "b8f717402eac2b0d",
        "engine_server.EngineServer._ok",
        "extended: a POST answers ok",
    ),
    Hook(
        "engineio.base_server:BaseServer._cors_allowed_origins",
        "d0cad0c66d5333cb",
        "engine_server.EngineServer.handle_request",
        "relied on: the origin check",
    ),
    Hook(
        "engineio.async_server:AsyncServer.handle_request",
        "1a8c878e35166cfe",
        "engine_server.EngineServer.handle_request",
        "replaced (copied and edited)",
    ),
    Hook(
        "engineio.async_server:AsyncServer._handle_connect",
        "5bd7edc1d1ae115a",
        "engine_server.EngineServer._handle_connect",
        "replaced (copied and edited)",
    ),
    Hook(
        "engineio.async_server:AsyncServer._trigger_event",
        "4a09b6e47eb66532",
        "engine_server.EngineServer.deliver_message",
        "relied on: handlers awaited with run_async=False",
    ),
    Hook(
        "engineio.async_server:AsyncServer.disconnect",
        "8bb6448caae41ca6",
        "server.SocketServer",
        "relied on: closes the socket and forgets it",
    ),
    Hook(
        "engineio.async_server:AsyncServer._make_response",
        "5f883ef57e34f34c",
        "engine_server.EngineServer._error",
        "relied on",
    ),
    Hook(
        "engineio.async_server:AsyncServer.shutdown",
        "3f734c62c291d56a",
        "engine_server.EngineServer.__init__",
        "relied on: stops the service task (none here)",
    ),
    Hook(
        "engineio.base_socket:BaseSocket.__init__",
        "8532b631a4dc815f",
        "engine_socket.EngineSocket.__init__",
        "relied on: the session's attributes",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket.poll",
        "826f58a9f3606db2",
        "engine_socket.EngineSocket.handle_get_request",
        "replaced (copied with a cap of 16 packets)",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket.receive",
        "a91ae36ec2fb5340",
        "engine_socket.EngineSocket.receive",
        "replaced",
    ),
    Hook("engineio.async_socket:AsyncSocket.send", "0437276ccba7ab09", "engine_socket.EngineSocket.send", "replaced"),
    Hook(
        "engineio.async_socket:AsyncSocket.schedule_ping",
        "fe316639159cd70d",
        "engine_socket.EngineSocket.schedule_ping",
        "replaced (the heartbeat is a deadline of the server's heartbeats)",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket.check_ping_timeout",
        "77616d5ca7809257",
        "engine_socket.EngineSocket.silent",
        "replaced (timers, not a sweep)",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket.handle_get_request",
        "05eaae9f0a60d9be",
        "engine_socket.EngineSocket.handle_get_request",
        "replaced",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket.handle_post_request",
        "82dca119a261a959",
        "engine_socket.EngineSocket.handle_post_request",
        "replaced",
    ),
    Hook("engineio.async_socket:AsyncSocket.close", "faa2e93902543244", "engine_socket.EngineSocket.close", "replaced"),
    Hook(
        "engineio.async_socket:AsyncSocket._upgrade_websocket",
        "820b83efe96adb98",
        "engine_socket.EngineSocket.handle_get_request",
        "relied on: builds the WebSocket of the _async table",
    ),
    Hook(
        "engineio.async_socket:AsyncSocket._websocket_handler",
        "27f120df4d717a24",
        "engine_socket.EngineSocket._websocket_handler",
        "extended: the hand-off (its upgrade probe copied); the fallback elsewhere",
    ),
    Hook(
        "engineio.async_drivers.asgi:translate_request",
        "39e74733f1fe46aa",
        "environ.translate_request",
        "copied and edited",
    ),
    Hook("engineio.async_drivers.asgi:make_response", "91fd4c6dde84e576", "engine_server.EngineServer", "relied on"),
    Hook(
        "engineio.async_drivers.asgi:WebSocket",
        "ce9c81653992cd62",
        "engine_server.HandOffWebSocket",
        "extended: exposes the hand-off",
    ),
    Hook("engineio.packet:Packet.encode", "8f3d5d869711cbb8", "managers.deliver_packet", "relied on: encode_cache"),
    Hook("engineio.packet:Packet.decode", "18e27ff7fd56addd", "engine_socket.decode_payload", "relied on"),
    Hook(
        "engineio.payload:Payload.decode",
        "9c7975664d815d3d",
        "engine_socket.decode_payload",
        "copied without its 16-packet cap",
    ),
    Hook(
        "socketio.base_server:BaseServer.__init__",
        "6b998e091b34a563",
        "server.SocketServer.__init__",
        "relied on: Engine.IO handlers, environ, _binary_packet",
    ),
    Hook("socketio.base_server:BaseServer._get_event_handler", "e18d9a6570aaaaf4", "server.SocketServer", "relied on"),
    Hook(
        "socketio.async_server:AsyncServer._handle_connect",
        "c97c480cf777de36",
        "server.SocketServer._handle_connect",
        "replaced (copied and edited)",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_event",
        "65178105ef8b593d",
        "server.SocketServer._handle_event",
        "replaced",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_event_internal",
        "472e8b723a12d507",
        "server.SocketServer._handle_event",
        "relied on",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_eio_connect",
        "76704886d944a7e6",
        "server.SocketServer._handle_eio_connect",
        "extended: arms the connect timeout",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_eio_message",
        "bef50fc0e1635921",
        "server.SocketServer._on_eio_message",
        "replaced (its dispatch copied)",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_eio_disconnect",
        "9344593148b66fd9",
        "server.SocketServer._on_eio_disconnect",
        "relied on",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_disconnect",
        "c0b32ada5b371230",
        "server.SocketServer._on_eio_message",
        "relied on",
    ),
    Hook(
        "socketio.async_server:AsyncServer._handle_ack",
        "b7521c6c30972551",
        "server.SocketServer._on_eio_message",
        "relied on",
    ),
    Hook("socketio.async_server:AsyncServer._send_packet", "a00022b42c1c29e9", "server.SocketServer", "relied on"),
    Hook(
        "socketio.packet:Packet.decode",
        "61ad7904b539f472",
        "server.SocketServer._decode",
        "relied on: attachment_count, namespace, id",
    ),
    Hook("socketio.packet:Packet.add_attachment", "01e024038f3d99f5", "server.SocketServer._decode", "relied on"),
    Hook("socketio.packet:Packet.encode", "513c45be75181da2", "managers.deliver_locally", "relied on"),
    Hook(
        "socketio.base_manager:BaseManager.basic_disconnect",
        "2933b50bc4b2ea7b",
        "managers.RoomIndex.basic_disconnect",
        "copied (its end)",
    ),
    Hook(
        "socketio.base_manager:BaseManager.basic_enter_room",
        "3f509586d2d7f47e",
        "managers.RoomIndex.basic_enter_room",
        "extended",
    ),
    Hook(
        "socketio.base_manager:BaseManager.basic_leave_room",
        "e27f3eea06d1c6a6",
        "managers.RoomIndex.basic_leave_room",
        "extended",
    ),
    Hook("socketio.base_manager:BaseManager.get_rooms", "56a1017f85af9f91", "managers.RoomIndex.get_rooms", "replaced"),
    Hook(
        "socketio.base_manager:BaseManager.get_participants", "7d78ad681c95de5b", "managers.deliver_packet", "relied on"
    ),
    Hook(
        "socketio.base_manager:BaseManager.pre_connect",
        "bfdba4c0c8f1bd8a",
        "managers.RoomIndex.is_local_sid",
        "relied on: rooms[namespace][None] holds the connections",
    ),
    Hook(
        "socketio.async_manager:AsyncManager.emit",
        "01ccd5b82b4f955e",
        "managers.LocalManager.emit",
        "extended: the fast path",
    ),
    Hook(
        "socketio.async_pubsub_manager:AsyncPubSubManager.emit",
        "6cc46e0ff9b6d7cf",
        "redis_manager.RedisManager.emit",
        "extended: local connections stay local",
    ),
    Hook(
        "socketio.async_pubsub_manager:AsyncPubSubManager._handle_emit",
        "4284671be955f644",
        "redis_manager.RedisManager._handle_emit",
        "extended",
    ),
    Hook(
        "socketio.async_pubsub_manager:AsyncPubSubManager._thread",
        "fa8d075729aac64d",
        "redis_manager.RedisManager._thread",
        "replaced (copied and edited)",
    ),
    Hook(
        "socketio.async_pubsub_manager:AsyncPubSubManager.initialize",
        "e8a2b026ecea320f",
        "redis_manager.RedisManager",
        "relied on: starts _thread",
    ),
    Hook(
        "socketio.async_redis_manager:AsyncRedisManager.__init__",
        "3360cfacd7923313",
        "redis_manager.RedisManager.__init__",
        "relied on",
    ),
    Hook(
        "socketio.async_redis_manager:AsyncRedisManager._publish",
        "033e4da7cc8768b4",
        "redis_manager.RedisManager._publish",
        "replaced",
    ),
    Hook(
        "socketio.async_redis_manager:AsyncRedisManager._redis_connect",
        "da4530c936323c25",
        "redis_manager.RedisManager._redis_listen_with_retries",
        "relied on",
    ),
    Hook(
        "socketio.async_redis_manager:AsyncRedisManager._redis_listen_with_retries",
        "ad347f253fd3423a",
        "redis_manager.RedisManager._redis_listen_with_retries",
        "replaced (copied and edited)",
    ),
    Hook(
        "socketio.async_redis_manager:AsyncRedisManager._listen",
        "3e74fdd1084b4e13",
        "redis_manager.RedisManager._thread",
        "relied on",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.__init__",
        "631dcd744eab875f",
        "ws_protocol.HandOffProtocol.hand_off",
        "relied on: queue, conn, writable, read_paused, connections",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.data_received",
        "c89d394077d8841d",
        "ws_protocol.HandOffProtocol.data_received",
        "extended: answers websockets' refusals",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.handle_connect",
        "fc648c2161ff8e13",
        "ws_protocol.HandOffProtocol.handle_connect",
        "extended: offers the hand-off",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.run_asgi",
        "662375aa38d9044c",
        "ws_protocol.HandOffProtocol.run_asgi",
        "copied and edited",
    ),
    Hook(
        "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol.stop_keepalive",
        "bbb91b997b37b77c",
        "ws_protocol.HandOffProtocol.hand_off",
        "relied on",
    ),
    Hook(
        "uvicorn.server:Server.shutdown",
        "9b33c50562992b1e",
        "ws_protocol.HandedOffWebSocket.shutdown",
        "relied on: calls shutdown() on every connection",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.data_received",
        "010a7ae59a5d3b1a",
        "http_protocol.HeadLimitsProtocol.data_received",
        "copied and edited",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_made",
        "6efb565ff3d36b91",
        "http_protocol.HeadLimitsProtocol.connection_made",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_lost",
        "c91a4c9bf2e29c55",
        "http_protocol.HeadLimitsProtocol.connection_lost",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_message_begin",
        "96d377fdc7c2baef",
        "http_protocol.HeadLimitsProtocol.on_message_begin",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_url",
        "37be44e962b04ca8",
        "http_protocol.HeadLimitsProtocol.on_url",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_header",
        "65d62c044f61fdbd",
        "http_protocol.HeadLimitsProtocol.on_header",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_headers_complete",
        "1ea8589acfad92d8",
        "http_protocol.HeadLimitsProtocol.on_headers_complete",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_message_complete",
        "1fbad42dc31fc01f",
        "http_protocol.HeadLimitsProtocol.on_message_complete",
        "extended",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.on_response_complete",
        "64e254f28e389e76",
        "http_protocol.HeadLimitsProtocol.on_response_complete",
        "extended: lingers after a response sent with its body unread",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:RequestResponseCycle.send",
        "abdd8601b326a8da",
        "http_protocol._CloseLingers",
        "relied on: closes self.transport itself after a response when keep_alive is false",
    ),
    Hook(
        "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.handle_websocket_upgrade",
        "179c4f769386ab89",
        "http_protocol.HeadLimitsProtocol",
        "relied on",
    ),
    Hook(
        "websockets.server:ServerProtocol.parse",
        "8c4d10340de4d32f",
        "ws_protocol.HandOffProtocol.data_received",
        "relied on: a refused handshake sets handshake_exc and queues its answer",
    ),
    Hook(
        "websockets.protocol:Protocol.receive_data",
        "df57bef09335e176",
        "ws_protocol.HandedOffWebSocket.data_received",
        "relied on",
    ),
    Hook(
        "websockets.protocol:Protocol.send_text",
        "9268f18e580a5d67",
        "ws_protocol.HandedOffWebSocket.send_message",
        "relied on",
    ),
    Hook(
        "websockets.protocol:Protocol.send_close",
        "bc2a998cc8b9a3ac",
        "ws_protocol.HandedOffWebSocket.close",
        "relied on",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer.__init__",
        "e602b4b5f484eba8",
        "admin.InstrumentedServer",
        "relied on: the attributes it sets (auth, mode, read_only, admin_namespace, event_buffer, stats_task)",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer.instrument",
        "b93e005e951b8ad4",
        "admin.InstrumentedServer.instrument",
        "extended: its patches of AsyncSocket undone, emit_json reported",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer.admin_connect",
        "bab0b185eadbcb09",
        "admin.InstrumentedServer.admin_connect",
        "replaced: all_sockets sent to the admin that connected",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer._trigger_event",
        "7971763acf36ffbb",
        "admin.InstrumentedServer._trigger_event",
        "replaced: accepted connections only, event data redacted",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer._handle_eio_disconnect",
        "00e6ab268701585a",
        "admin.InstrumentedServer._handle_eio_disconnect",
        "replaced: the transport's disconnect kept",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer.serialize_socket",
        "435b68cabdb5e801",
        "admin.InstrumentedServer.serialize_socket",
        "extended: credentials redacted",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer._check_for_upgrade",
        "88bf7de8d3b4c59b",
        "admin.InstrumentedServer._report_connected",
        "relied on",
    ),
    Hook(
        "socketio.async_admin:InstrumentedAsyncServer.shutdown",
        "63bbc735f6afa9f1",
        "admin.InstrumentedServer.shutdown",
        "replaced: the stats task and upgrade checks cancelled at once",
    ),
    Hook(
        "socketio.base_server:BaseServer._get_event_handler",
        "e18d9a6570aaaaf4",
        "server.SocketServer._get_event_handler",
        "extended: a client event named * reaches the catch-all with its name",
    ),
    Hook(
        "socketio.async_server:AsyncServer._trigger_event",
        "01ba90cfa09ba43e",
        "server.SocketServer._trigger_event",
        "extended: a connection's session put aside before its disconnect handler",
    ),
    Hook(
        "socketio.async_server:AsyncServer.enter_room",
        "69bba99d7c27aaeb",
        "server.SocketServer.enter_room",
        "extended: the session told its rooms",
    ),
    Hook(
        "socketio.async_server:AsyncServer.leave_room",
        "cfa29f46c6f73877",
        "server.SocketServer.leave_room",
        "extended: the session told its rooms",
    ),
]


def _resolve(target: str) -> object:
    module, _, qualname = target.partition(":")
    obj: object = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def digest(target: str) -> str:
    """The digest of the upstream source of ``target`` as installed now."""
    return hashlib.sha256(inspect.getsource(_resolve(target)).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def drift(hooks: list[Hook] | None = None, built_for: dict[str, str] | None = None) -> list[str]:
    """Every difference between the table and what is installed, one line each (none: in step)."""
    problems = []
    for name, expected in (built_for or BUILT_FOR).items():
        installed = version(name)
        if installed != expected:
            problems.append(
                f"{name} {installed} is installed; this package was built for {expected}: "
                "re-read every hook below on it, then update BUILT_FOR in apps/transport/upstream.py"
            )
    for hook in hooks if hooks is not None else HOOKS:
        try:
            now = digest(hook.target)
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            problems.append(f"{hook.target} is gone ({type(exc).__name__}): apps/transport/{hook.here} {hook.how}")
            continue
        if now != hook.digest:
            problems.append(
                f"{hook.target} changed upstream ({hook.digest} -> {now}): re-read apps/transport/{hook.here} "
                f"({hook.how}), then update its digest in apps/transport/upstream.py"
            )
    return problems


if __name__ == "__main__":  # print the table as installed now
    for hook in HOOKS:
        print(f'    Hook("{hook.target}", "{digest(hook.target)}", "{hook.here}", "{hook.how}"),')
