"""The Python cost of one emit before its first recipient, stage by stage (issue 12's "per emit"
figure), without a network or a load generator:

    .venv/bin/python bench/micro_emit.py [--count 20000] [--recovery on|off] [--json]

Each stage is what the broadcaster does for ``broadcast_agent_status_changed`` (the benchmark's
event, a 317-byte envelope), timed alone over ``count`` calls: validation of the payload, the
envelope, JSON serialisation, routing, the packet text and its WebSocket frame (with recovery on,
the history's append, which builds the packet with its offset). ``whole`` is the real call, through
a ``SocketServer`` with a ``LocalManager`` and nobody in the room: the sum of the stages plus the
glue between them. Best of 5 rounds of each, in microseconds per emit.

``per recipient`` is what delivery then costs for each connection in the room (1,000 of them,
each an Engine.IO socket with its handed-off WebSocket, over a transport that takes its writes
and does nothing with them: the system call is not counted), with the turn's write.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.api.events.broadcaster import PAYLOADS, Broadcaster
from apps.api.events.routing import rooms_for
from apps.api.websocket.models import Event, EventType
from apps.api.websocket.protocol import NAMESPACE
from apps.api.websocket.server import SocketIOEmitter
from apps.transport import FramedStr, LocalManager, MemoryRecovery, SocketServer, event_packet
from apps.transport.engine_socket import EngineSocket
from apps.transport.managers import deliver_packet, packet_head
from apps.transport.ws_protocol import HandedOffWebSocket, turn_writes

KIND = EventType.AGENT_STATUS_CHANGED
ROUNDS = 5
RECIPIENTS = 1_000


class NullTransport(asyncio.Transport):
    """Takes writes, sends nothing."""

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def open_protocol() -> Any:
    from websockets.protocol import State
    from websockets.server import ServerProtocol

    return ServerProtocol(state=State.OPEN)


async def per_recipient(count: int, recovery: bool) -> float:
    """Microseconds of delivery per recipient of one emit to a room of :data:`RECIPIENTS`."""
    history = MemoryRecovery(window=120, max_events=10_000) if recovery else None
    server = SocketServer(client_manager=LocalManager(recovery=history), async_mode="asgi")
    server.manager.initialize()
    manager = server.manager
    connections: set[Any] = set()
    for i in range(RECIPIENTS):
        eio_sid = f"e{i}"
        socket = EngineSocket(server.eio, eio_sid)
        socket.ws = HandedOffWebSocket(NullTransport(), open_protocol(), socket, connections, 1 << 24)
        server.eio.sockets[eio_sid] = socket
        sid = await manager.connect(eio_sid, NAMESPACE)
        await manager.enter_room(sid, NAMESPACE, "agent:x")
    event = Event.of(KIND, "agent_service", PAYLOADS[KIND].model_validate(fields()))
    packet = event_packet(NAMESPACE, KIND.value, event.wire_json())
    turn = turn_writes()

    async def deliver() -> None:
        await deliver_packet(manager, packet, NAMESPACE, "agent:x")
        turn.flush()

    return await best_async(max(1, count // RECIPIENTS * 5), deliver) / RECIPIENTS


def fields() -> dict[str, Any]:
    return {
        "agent_id": uuid4(),
        "agent_name": "bench",
        "status": "busy",
        "availability": 5,
        "current_task": "1234:5678901.234",
    }


def best(count: int, call: Callable[[], Any]) -> float:
    """Microseconds per call, best of :data:`ROUNDS` rounds of ``count`` calls."""
    times = []
    for _ in range(ROUNDS):
        gc.collect()
        started = time.perf_counter_ns()
        for _ in range(count):
            call()
        times.append((time.perf_counter_ns() - started) / count / 1000)
    return min(times)


async def best_async(count: int, call: Callable[[], Any]) -> float:
    times = []
    for _ in range(ROUNDS):
        gc.collect()
        started = time.perf_counter_ns()
        for _ in range(count):
            await call()
        times.append((time.perf_counter_ns() - started) / count / 1000)
    return min(times)


async def measure(count: int, recovery: bool) -> dict[str, float]:
    model = PAYLOADS[KIND]
    given = fields()
    data = model.model_validate(given)
    event = Event.of(KIND, "agent_service", data)
    text = event.wire_json()
    history = MemoryRecovery(window=120, max_events=10_000) if recovery else None
    head = packet_head(NAMESPACE, KIND.value)

    def frame() -> Any:
        if history is not None:
            _, packet = history.append(NAMESPACE, "agent:x", head, text)
        else:
            packet = event_packet(NAMESPACE, KIND.value, text)
        return FramedStr.of("4" + packet)

    stages = {
        # what the broadcaster calls: model_validate's validator, without the classmethod around it
        "validation": best(count, lambda: model.__pydantic_validator__.validate_python(given)),
        "envelope": best(count, lambda: Event.of(KIND, "agent_service", data)),
        "serialisation": best(count, event.wire_json),
        "routing": best(count, lambda: rooms_for(data)),
        "packet and frame": best(count, frame),
    }
    stages["sum of the stages"] = sum(stages.values())
    server = SocketServer(client_manager=LocalManager(recovery=history), async_mode="asgi")
    broadcaster = Broadcaster(SocketIOEmitter(server))
    server.manager.initialize()
    stages["whole"] = await best_async(count, lambda: broadcaster.broadcast_agent_status_changed(**given))
    stages["per recipient"] = await per_recipient(count, recovery)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--recovery", choices=["on", "off"], default="on")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    stages = asyncio.run(measure(args.count, args.recovery == "on"))
    if args.json:
        print(json.dumps({"recovery": args.recovery, "us_per_emit": stages}))
        return
    print(f"per emit, before the first recipient (recovery {args.recovery}, best of {ROUNDS} x {args.count}):")
    for name, value in stages.items():
        print(f"  {name:<20} {value:7.2f} us")


if __name__ == "__main__":
    main()
