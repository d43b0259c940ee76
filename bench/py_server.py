"""The service under test: the real app from ``apps.api.app.create_app`` under uvicorn, with a few
benchmark-only HTTP endpoints in front of it.

    python bench/py_server.py --port 9000 --secret S [--redis-url URL --redis-channel C --redis-key-prefix P]
                              [--ws auto] [--loop auto] [--ws-per-message-deflate true] [--recovery on|off]

- ``POST /bench/emit`` runs an emit schedule and answers when it is over: ``count`` events at
  ``rate`` a second (0: as fast as the server goes, yielding to the event loop between events),
  event ``i`` to room ``agent:<agent id of agent_base + i % rooms>``. Every event goes through the
  real path, ``get_broadcaster().broadcast_agent_status_changed(...)`` (validation, envelope,
  routing, python-socketio emit); its ``current_task`` carries the sequence number and the
  scheduled send time (CLOCK_MONOTONIC ms), from which the load generator measures latency. A schedule stops
  by itself ``max_seconds`` after its start, even when the server has fallen behind.
- ``POST /bench/gc`` runs the garbage collector (before memory is sampled); ``GET /bench/ping``
  says the server is up, with versions and options.

Everything else (Socket.IO at ``/socket.io/``, namespace ``/ws``, the HTTP API) is the service
itself: the bench endpoints are a separate ASGI app in front of it, so nothing in ``apps/api`` is
changed. uvicorn runs with the options the service is served with
(``apps.api.serving.uvicorn_options``, as ``apps/api/main.py``), on 127.0.0.1 with
``log_level="warning"``; ``--ws``, ``--loop`` and ``--ws-per-message-deflate`` override them so
that options can be compared. ``--recovery on|off`` sets the service's connection state recovery
(``Settings.recovery_enabled``; default: the service's own).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from uuid import UUID

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from apps.api.app import create_app  # noqa: E402
from apps.api.config import Settings  # noqa: E402
from apps.api.events.broadcaster import get_broadcaster  # noqa: E402
from apps.api.websocket.models import AgentStatusChangedData, Event, EventType, new_event_id  # noqa: E402
from apps.api.websocket.protocol import NAMESPACE  # noqa: E402
from apps.api.websocket.rooms import agent_room  # noqa: E402

ASGIApp = Any


def agent_id(n: int) -> UUID:
    """The agent id of benchmark room ``n`` (the same formula in bench/common.mjs)."""
    return UUID(f"00000000-0000-4000-8000-{n:012d}")


def marker(seq: int, sched_ms: float) -> str:
    """``current_task``: sequence number and scheduled send time, fixed width (bench/common.mjs).
    The time is cut (not rounded) to 0.1 ms: rounded up, an event delivered within 0.05 ms of its
    send time would seem to arrive before it was sent."""
    return f"{seq:05d}:{math.floor(sched_ms * 10) / 10:015.1f}"


def envelope_bytes() -> int:
    """Size of one benchmark event's envelope as python-socketio serialises it."""
    event = Event(
        type=EventType.AGENT_STATUS_CHANGED,
        source="agent_service",
        data=AgentStatusChangedData(
            agent_id=agent_id(0),
            agent_name="bench",
            status="busy",
            availability=5,
            current_task=marker(0, time.monotonic() * 1000),
        ),
    )
    return len(json.dumps(event.wire(), separators=(",", ":")).encode())


#: ``--emit-path``: ``broadcaster`` (the service's typed call) or ``transport`` (:func:`transport_send`).
EMIT_PATH = "broadcaster"
_MARK = "#" * len(marker(0, 0))  # where the marker goes in the envelope built once
KIND = EventType.AGENT_STATUS_CHANGED.value


def transport_send(agents: list[UUID], emit_json: Any = None) -> Any:
    """A stand-in for ``broadcast_agent_status_changed`` that sends the same envelope (the same
    bytes but for its id and timestamp, built once per room, before the measured phase: the
    warm-up's emit builds them) straight to the transport's ``emit_json``, with a key per event
    as the broadcaster gives: no validation, envelope, serialisation, routing or metrics per event.
    The difference between the two paths is what the broadcaster costs in the server."""
    if emit_json is None:
        # SocketIOEmitter's: the server's manager.emit_json (None under WEBSOCKET_TRANSPORT=stock)
        emit_json = getattr(get_broadcaster()._transport(), "_emit_json", None)
    if emit_json is None:
        raise ValueError("--emit-path transport needs the service's transport (not WEBSOCKET_TRANSPORT=stock)")
    for agent in agents:
        if agent not in _TEMPLATES:
            data = AgentStatusChangedData(
                agent_id=agent, agent_name="bench", status="busy", availability=5, current_task=_MARK
            )
            head, tail = Event.of(EventType.AGENT_STATUS_CHANGED, "agent_service", data).wire_json().split(_MARK)
            _TEMPLATES[agent] = (head, tail, [agent_room(agent)])
    templates = _TEMPLATES

    async def send(*, agent_id: UUID, current_task: str, **_: Any) -> None:
        head, tail, rooms = templates[agent_id]
        await emit_json(KIND, f"{head}{current_task}{tail}", NAMESPACE, rooms, key=new_event_id())

    return send


#: each room's envelope, around the marker (:func:`transport_send`)
_TEMPLATES: dict[UUID, tuple[str, str, list[str]]] = {}


def _percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))]


async def run_schedule(spec: dict[str, Any]) -> dict[str, Any]:
    count = int(spec["count"])
    rate = float(spec.get("rate") or 0)
    base = int(spec.get("agent_base") or 0)
    room_count = max(1, min(int(spec.get("rooms") or 1), count))
    max_seconds = float(spec.get("max_seconds") or 60)
    if not 0 < count < 100_000:
        raise ValueError("count must be 1..99999")
    rooms = [agent_id(base + k) for k in range(room_count)]
    send = get_broadcaster().broadcast_agent_status_changed
    if EMIT_PATH == "transport":
        send = transport_send(rooms)
    clock = time.monotonic  # CLOCK_MONOTONIC: the load generator's clock too (bench/common.mjs)
    start = clock() + (0.02 if rate > 0 else 0)
    hard_stop = start + max_seconds
    lags: list[float] = []
    emitted = 0
    aborted = False
    last_sched = start
    for i in range(count):
        if rate > 0:
            sched = start + i / rate
            if sched <= clock():
                # Behind schedule: still yield, as a real producer's awaits would, so writes go out.
                await asyncio.sleep(0)
            # Timers have millisecond steps and may fire early: never send before the scheduled time.
            # A wait shorter than 1 ms sleeps 1 ms, as Node's setTimeout does (node_server.mjs): a
            # shorter timer fires at once under uvloop, and the loop would spin until the time came.
            while (wait := sched - clock()) > 0:  # noqa: ASYNC110 (a timer, not waiting for an event)
                await asyncio.sleep(max(wait, 0.001))
        else:
            if i:
                await asyncio.sleep(0)
            sched = clock()
        now = clock()
        if now > hard_stop:
            aborted = True
            break
        lags.append((now - sched) * 1000)
        await send(
            agent_id=rooms[i % room_count],
            agent_name="bench",
            status="busy",
            availability=5,
            current_task=marker(i, sched * 1000),
        )
        emitted += 1
        last_sched = sched
    end = clock()
    return {
        "planned": count,
        "emitted": emitted,
        "aborted": aborted,
        "duration_s": end - start,
        "end_lag_ms": (end - last_sched) * 1000,
        "lag_ms": {"p50": _percentile(lags, 50), "p99": _percentile(lags, 99), "max": max(lags, default=None)},
        "envelope_bytes": envelope_bytes(),
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def bench_app(options: dict[str, Any]) -> ASGIApp:
    info = {
        "kind": "python",
        "python": sys.version.split()[0],
        "python-socketio": _version("python-socketio"),
        "python-engineio": _version("python-engineio"),
        "uvicorn": _version("uvicorn"),
        "fastapi": _version("fastapi"),
        "websockets": _version("websockets"),
        "uvloop": _version("uvloop"),
        **options,
    }

    async def ping(_: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "pid": os.getpid(), **info})

    async def collect(_: Request) -> JSONResponse:
        gc.collect()
        return JSONResponse({"ok": True, "gc": True})

    async def emit(request: Request) -> JSONResponse:
        return JSONResponse(await run_schedule(await request.json()))

    return Starlette(
        routes=[
            Route("/bench/ping", ping, methods=["GET"]),
            Route("/bench/gc", collect, methods=["POST"]),
            Route("/bench/emit", emit, methods=["POST"]),
        ]
    )


class BenchFront:
    """``/bench/*`` HTTP requests to the bench app; everything else (lifespan included) to the service."""

    def __init__(self, service: ASGIApp, bench: ASGIApp) -> None:
        self.service = service
        self.bench = bench

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/bench/"):
            await self.bench(scope, receive, send)
        else:
            await self.service(scope, receive, send)


def _exit_with_parent(pid: int) -> None:
    """Never outlive the benchmark that started this server."""
    while True:
        time.sleep(1)
        try:
            os.kill(pid, 0)
        except OSError:
            os._exit(0)


def serving_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options as the service is served (``apps.api.serving.uvicorn_options``, what
    ``apps/api/main.py`` uses), or uvicorn's defaults in a checkout that has no such module."""
    try:
        from apps.api.serving import uvicorn_options
    except ImportError:
        return {}
    return dict(uvicorn_options(settings))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default="bench-secret-" + "0123456789abcdef" * 2)
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone")
    parser.add_argument("--redis-url")
    parser.add_argument("--redis-channel", default="socketio")
    parser.add_argument("--redis-key-prefix", default="events:")
    parser.add_argument("--ws", help="uvicorn's ws (auto, websockets, websockets-sansio, wsproto, or module:Class)")
    parser.add_argument("--loop", help="uvicorn's loop (auto, asyncio, uvloop)")
    parser.add_argument("--ws-per-message-deflate", choices=["true", "false"], help="uvicorn's ws_per_message_deflate")
    parser.add_argument("--recovery", choices=["on", "off"], help="Settings.recovery_enabled")
    parser.add_argument("--emit-path", choices=["broadcaster", "transport"], default="broadcaster")
    args = parser.parse_args()
    global EMIT_PATH
    EMIT_PATH = args.emit_path
    overrides: dict[str, Any] = {}
    if args.ws_per_message_deflate is not None:
        overrides["websocket_compression"] = args.ws_per_message_deflate == "true"
    if args.recovery is not None:
        overrides["recovery_enabled"] = args.recovery == "on"
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="development",
        jwt_secret_key=args.secret,
        log_file=None,
        log_level="WARNING",
        redis_url=args.redis_url,
        redis_channel=args.redis_channel,
        redis_key_prefix=args.redis_key_prefix,
        # every load client connects from 127.0.0.1, often as one user; Node's server has no such
        # limits: they are off here, as a deployment behind a balancer would size them
        connects_per_second_per_address=0,
        max_connections_per_user=1_000_000,
        # the http scenario PUTs at 20/s as one user: the default per-user limit (20/s) would
        # refuse some of them at a window's edge (and Node's stand-in has no limit)
        http_rate_limit_per_user="1000/second",
        max_connections=1_000_000,
        **overrides,
    )
    if args.parent_pid:
        threading.Thread(target=_exit_with_parent, args=(args.parent_pid,), daemon=True).start()
    # The service's own uvicorn options, then what the command line overrides.
    options = serving_options(settings)
    options.update(host="127.0.0.1", port=args.port, log_level="warning", timeout_graceful_shutdown=3)
    if args.ws:
        options["ws"] = args.ws
    if args.loop:
        options["loop"] = args.loop
    if args.ws_per_message_deflate is not None:
        options["ws_per_message_deflate"] = args.ws_per_message_deflate == "true"
    ws = options.get("ws", "auto")
    info = {
        "ws": ws if isinstance(ws, str) else f"{ws.__module__}:{ws.__qualname__}",
        "loop": options.get("loop", "auto"),
        "per_message_deflate": options.get("ws_per_message_deflate", True),
        "ws_ping_interval": options.get("ws_ping_interval", 20.0),
        "serving_options": "apps.api.serving.uvicorn_options" if serving_options(settings) else "uvicorn defaults",
        "redis": bool(args.redis_url),
        "recovery": getattr(settings, "recovery_enabled", None),
        "emit_path": args.emit_path,
    }
    app = BenchFront(create_app(settings), bench_app(info))
    uvicorn.run(app, **options)


if __name__ == "__main__":
    main()
