"""The Python cost of one emit before its first recipient, stage by stage (issue 12's "per emit"
figure), without a network or a load generator:

    .venv/bin/python bench/micro_emit.py [--count 20000] [--recovery on|off] [--json]

Each stage is what the broadcaster does for ``broadcast_agent_status_changed`` (the benchmark's
event, a 317-byte envelope), timed alone over ``count`` calls: validation of the payload, the
envelope, JSON serialisation, routing, the packet text and its WebSocket frame (with recovery on,
the history's append, which builds the packet with its offset). ``whole`` is the real call, through
a ``SocketServer`` with a ``LocalManager`` and nobody in the room: the sum of the stages plus the
glue between them. Best of 5 rounds of each, in microseconds per emit.
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
from apps.transport.managers import packet_head

KIND = EventType.AGENT_STATUS_CHANGED
ROUNDS = 5


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
        "validation": best(count, lambda: model.model_validate(given)),
        "envelope": best(count, lambda: Event.of(KIND, "agent_service", data)),
        "serialisation": best(count, event.wire_json),
        "routing": best(count, lambda: rooms_for(data)),
        "packet and frame": best(count, frame),
    }
    stages["sum of the stages"] = sum(stages.values())
    server = SocketServer(client_manager=LocalManager(recovery=history), async_mode="asgi")
    broadcaster = Broadcaster(SocketIOEmitter(server))
    server.manager.initialize()
    stages["whole"] = await best_async(count, lambda: broadcaster.broadcast_agent_status_changed(**fields()))
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
