"""The benchmark's scenarios: the parts of a session, each on a fresh server (idle connections and
rooms, fan-out, the rate sweep, one connection, HTTP PUT), the session through Redis (two instances
of a server), and the unmeasured warm-ups before each measurement. ``main_session`` and
``redis_session`` run them against one kind of server; ``bench/README.md`` says what each does.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from bench.harness import (
    BenchError,
    LoadGen,
    Profile,
    Server,
    Session,
    cpu_seconds,
    dig,
    drain,
    http_json,
    make_token,
    measure,
    progress,
    redis_pid,
    wait_ready_endpoint,
)

SCENARIOS = ("idle", "storm", "rooms", "fanout", "burst", "rate", "single", "http", "redis")
#: The agent id index of the fan-out room (bench/common.mjs: agentId).
FANOUT_AGENT = 999_999


# --- setting up a part: clients, warm-ups, a fresh server -----------------------------------------------------


def agent_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def emit_trigger(server: Server, spec: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    return lambda: dict(server.post("/bench/emit", spec, timeout=spec["max_seconds"] + 30))


def warm_up(lg: LoadGen, trigger: Callable[[], dict[str, Any]], expected: int) -> None:
    """An unmeasured round first: the first event to a new connection pays one-time costs (buffers,
    per-connection state, code paths run once) on either side, which are not the steady state."""
    lg.cmd("arm")
    trigger()
    lg.cmd("wait", timeout=60, expected=expected, quiet_s=1.0, deadline_s=20)


#: The load generator's error for a client whose CONNECT was not answered in time (socket.io-client's
#: ``timeout``, 20 s).
CONNECT_TIMEOUT = "connect_error: timeout"


def emit_warm_up(lg: LoadGen, server: Server, clients: int, *, agent_base: int, rooms: int = 1) -> None:
    """One event to each of ``rooms`` rooms (``clients`` clients in all), 1 s at most, unmeasured."""
    spec = {"count": rooms, "rate": max(rooms, 20), "agent_base": agent_base, "rooms": rooms, "max_seconds": 10}
    warm_up(lg, emit_trigger(server, spec), clients)


def ensure_clients(lg: LoadGen, server: Server, n: int, prof: Profile, rooms: list[str]) -> dict[str, Any]:
    """Clients 0..n-1 connected (the new ones subscribing to ``rooms``), within
    ``prof.ramp_budget_s``. Answers the load generator's reply, whose ``clients`` is how many are
    connected: fewer than ``n`` when the server could not take them in time (the caller measures
    with those, and says so)."""
    reply = lg.connect([server.ws_url], max(0, n - lg.next_index), rooms, prof)
    capacity = ("deadline", CONNECT_TIMEOUT, "subscribe: no ack in 20 s")
    failed = {k: v for k, v in reply["errors"].items() if k not in capacity}
    if failed:
        raise BenchError(f"{sum(failed.values())} of {n} connections failed: {failed}")
    if reply["clients"] < n:
        progress(
            f"  {server.name}: only {reply['clients']} of {n} connected in {reply['seconds']:.0f} s {reply['errors']}"
        )
    return reply


@contextlib.contextmanager
def fresh_server(sess: Session, lg: LoadGen) -> Iterator[Server]:
    """A new server for one part of the session; afterwards it is stopped and the load generator
    drops its clients. (Tearing thousands of connections down one by one costs some servers far
    more than the measurement itself, and is not what is measured.)"""
    server = Server(sess.kind, sess.opts)
    sess.results.setdefault("_info", server.info)
    try:
        yield server
    finally:
        server.stop()
        if lg.next_index:
            lg.cmd("disconnect", timeout=60, **{"from": 0, "to": lg.next_index})
            lg.next_index = 0


# --- the parts of the main session ----------------------------------------------------------------------------


def part_idle_rooms(sess: Session, lg: LoadGen, server: Server, scenarios: set[str]) -> None:
    prof = sess.prof
    # Idle: connected clients (each in its own user room and "global", as on connect), no events.
    server.post("/bench/gc", {})
    time.sleep(prof.settle_s)
    base_rss = server.rss()
    levels = prof.idle_levels if "idle" in scenarios else (prof.rooms_clients,)
    live = 0
    for level in levels:
        cpu0 = server.cpu()
        reply = ensure_clients(lg, server, level, prof, [])
        connect_cpu = server.cpu() - cpu0
        live = reply["clients"]
        time.sleep(prof.settle_s)
        server.post("/bench/gc", {})
        time.sleep(prof.settle_s / 2)
        # The last level over a whole heartbeat interval: each connection's PING/PONG once.
        window = prof.heartbeat_window_s if level == levels[-1] else prof.settle_s
        cpu0, t0 = server.cpu(), time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        idle_cpu = (server.cpu() - cpu0) / elapsed
        rss = server.rss()
        if "idle" in scenarios:
            sess.record(
                f"idle-{level}",
                {
                    "connections": live,
                    "target": level,
                    "baseline_rss_mb": round(base_rss, 1),
                    "rss_mb": round(rss, 1),
                    "kb_per_connection": round((rss - base_rss) * 1024 / live, 2) if live else None,
                    "connect_per_s": round(reply["per_second"]),
                    "connect_s": round(reply["seconds"], 2),
                    "connect_cpu_us": round(connect_cpu * 1e6 / reply["connected"]) if reply["connected"] else None,
                    "connect_ms": reply.get("connect_ms"),
                    "idle_cpu_pct": round(idle_cpu * 100, 2),
                    "idle_window_s": round(elapsed, 1),
                    "idle_cpu_us_per_conn_s": round(idle_cpu * 1e6 / live, 2) if live else None,
                    "ws_extensions": reply.get("extensions"),
                },
            )
    if "rooms" not in scenarios:
        return
    n = prof.rooms_clients
    if live < n:
        live = ensure_clients(lg, server, n, prof, [])["clients"]
    # Each client joins its own agent room, in index order, within the budget: exactly clients
    # [0, k) are subscribed, and the schedule sends one event a second to each of their rooms.
    sub = lg.cmd(
        "subscribe",
        timeout=prof.subscribe_budget_s + 60,
        room="agent:{agent}",
        batch=200,
        deadline_s=prof.subscribe_budget_s,
        **{"from": 0, "to": live},
    )
    k = sub["ok"]
    if sub["failed"] or k < sub["upto"]:
        raise BenchError(f"rooms: {sub['failed']} subscriptions failed")
    if k < n:
        progress(f"  {server.name}: only {k} of {n} clients subscribed to their room in {sub['seconds']:.0f} s")
    emit_warm_up(lg, server, k, agent_base=0, rooms=k)
    count = int(k * prof.rooms_seconds)
    spec = {"count": count, "rate": k, "agent_base": 0, "rooms": k, "max_seconds": prof.rooms_seconds * 2 + 3}
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure(
            [server],
            lg,
            emit_trigger(server, spec),
            count,
            quiet_s=prof.quiet_s,
            deadline_s=prof.rooms_seconds * 3 + 10,
        ),
        prof.repeat,
    )
    figures.update(connections=live, rooms=k, subscribe_per_s=round(sub["per_second"]))
    sess.record(f"rooms-{n}", figures)


def part_storm(sess: Session, lg: LoadGen, server: Server) -> None:
    """``storm_clients`` clients connect at once to a fresh server, as they do after a restart or a
    deploy: no pacing, every handshake in flight together, each with socket.io-client's 20 s
    connect timeout. Measured: how long until the last is connected, how many timed out, the time
    each took, and the server's CPU per connection."""
    prof = sess.prof
    n = prof.storm_clients
    server.post("/bench/gc", {})
    time.sleep(prof.settle_s)
    cpu0, lg_cpu0 = server.cpu(), lg.cpu()
    reply = lg.connect([server.ws_url], n, [], prof, rate=1_000_000, max_pending=n, budget_s=prof.storm_budget_s)
    cpu, lg_cpu = server.cpu() - cpu0, lg.cpu() - lg_cpu0
    connected = reply["connected"]
    seconds = reply["last_connected_s"] or 0.0
    sess.record(
        f"storm-{n}",
        {
            "clients": n,
            "connected": connected,
            "timeouts": reply["errors"].get(CONNECT_TIMEOUT, 0),
            "errors": reply["errors"],
            "seconds": round(seconds, 2),
            "settled_s": round(reply["seconds"], 2),
            "connect_ms": reply.get("connect_ms"),
            "connect_per_s": round(connected / seconds) if seconds else None,
            "cpu_s": round(cpu, 2),
            "connect_cpu_us": round(cpu * 1e6 / connected) if connected else None,
            "loadgen_busy": round(lg_cpu / reply["seconds"], 2) if reply["seconds"] else None,
        },
    )


def fanout_room_ready(lg: LoadGen, server: Server, n: int, prof: Profile) -> int:
    """Clients 0..n-1 connected, in the fan-out room, settled and warmed up; answers how many are
    connected."""
    live: int = ensure_clients(lg, server, n, prof, [f"agent:{agent_id(FANOUT_AGENT)}"])["clients"]
    time.sleep(prof.settle_s)
    emit_warm_up(lg, server, live, agent_base=FANOUT_AGENT)
    return live


def measure_paced_fanout(
    servers: list[Server], lg: LoadGen, sender: Server, recipients: int, count: int, interval: float, prof: Profile
) -> dict[str, Any]:
    """``count`` events ``interval`` seconds apart from ``sender`` to the fan-out room, measured
    until all ``recipients`` have each of them."""
    spec = {
        "count": count,
        "rate": 1 / interval,
        "agent_base": FANOUT_AGENT,
        "rooms": 1,
        "max_seconds": count * interval * 2 + 5,
    }
    return measure(
        servers,
        lg,
        emit_trigger(sender, spec),
        recipients * count,
        quiet_s=prof.quiet_s,
        deadline_s=count * interval * 3 + 15,
    )


def part_fanout(sess: Session, lg: LoadGen, server: Server, size: int) -> int:
    """Fan-out to one room of ``size`` clients; answers how many clients are connected."""
    prof = sess.prof
    live = fanout_room_ready(lg, server, size, prof)
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure_paced_fanout([server], lg, server, live, prof.fanout_events, prof.fanout_interval, prof),
        prof.repeat,
    )
    figures["clients"] = live
    sess.record(f"fanout-{size}", figures)
    return live


def part_burst(sess: Session, lg: LoadGen, server: Server, size: int, events: int) -> None:
    """``events`` events back to back (the server yields to its event loop between them, as a
    producer's awaits would) to one room of ``size`` clients."""
    prof = sess.prof
    live = fanout_room_ready(lg, server, size, prof)
    spec = {"count": events, "rate": 0, "agent_base": FANOUT_AGENT, "rooms": 1, "max_seconds": 60}
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure([server], lg, emit_trigger(server, spec), live * events, quiet_s=prof.quiet_s, deadline_s=90),
        prof.repeat,
    )
    figures.update(clients=live, events=events)
    sess.record(f"burst-{size}x{events}", figures)


def measure_rate(lg: LoadGen, server: Server, live: int, rate: float, prof: Profile) -> dict[str, Any]:
    """``rate`` events a second for ``rate_seconds`` to the fan-out room of ``live`` clients."""
    count = int(rate * prof.rate_seconds)
    spec = {
        "count": count,
        "rate": rate,
        "agent_base": FANOUT_AGENT,
        "rooms": 1,
        "max_seconds": prof.rate_seconds * 2 + 3,
    }
    figures = measure(
        [server],
        lg,
        emit_trigger(server, spec),
        count * live,
        quiet_s=prof.quiet_s,
        deadline_s=prof.rate_seconds * 3 + 10,
    )
    figures.update(rate=rate, clients=live)
    return figures


def part_rate(sess: Session, lg: LoadGen, server: Server) -> None:
    """A steady rate to one room of ``rate_clients``, rate after rate, until the server no longer
    sustains it (see SUSTAIN_P99_MS); the highest rate it keeps up with is the p99 < 50 ms one."""
    prof = sess.prof
    n = prof.rate_clients
    live = fanout_room_ready(lg, server, n, prof)
    kept: list[float] = []
    sustained: list[float] = []
    previous: dict[str, Any] | None = None
    for rate in prof.rates:
        drain(lg, previous)
        previous = measure_rate(lg, server, live, rate, prof)
        if not previous["sustained"]:
            # One more run before giving up on this rate: a single pause must not end the sweep.
            drain(lg, previous)
            again = measure_rate(lg, server, live, rate, prof)
            first_p99 = dig(previous, ("latency_ms", "p99"))
            best = (
                again
                if again["sustained"] or (dig(again, ("latency_ms", "p99")) or 1e9) < (first_p99 or 1e9)
                else previous
            )
            best["tries"] = [
                {"p99": dig(r, ("latency_ms", "p99")), "sustained": r["sustained"], "received": r["received"]}
                for r in (previous, again)
            ]
            previous = best
        sess.record(f"rate-{n}x{rate:g}", previous)
        if previous["kept_up"]:
            kept.append(rate)
        if not previous["sustained"]:
            break
        sustained.append(rate)
    drain(lg, previous)
    sess.results[f"rate-{n}-max"] = {
        "max_rate_kept_up": max(kept, default=0),
        "max_rate_sustained": max(sustained, default=0),
        "max_deliveries_per_s_sustained": max(sustained, default=0) * live,
        "first_rate_not_sustained": None if len(sustained) == len(prof.rates) else prof.rates[len(sustained)],
        "loadgen_bound_at_limit": bool(previous and previous.get("loadgen_bound")),
        "clients": live,
    }


def part_single(sess: Session, lg: LoadGen, server: Server) -> None:
    prof = sess.prof
    ensure_clients(lg, server, 1, prof, [f"agent:{agent_id(FANOUT_AGENT)}"])
    emit_warm_up(lg, server, 1, agent_base=FANOUT_AGENT)
    count = prof.single_events
    spec = {"count": count, "rate": 0, "agent_base": FANOUT_AGENT, "rooms": 1, "max_seconds": 30}
    sess.record(
        "single-connection",
        sess.repeat(
            [server],
            lg,
            lambda: measure([server], lg, emit_trigger(server, spec), count, quiet_s=prof.quiet_s, deadline_s=40),
            prof.repeat,
        ),
    )


def part_http(sess: Session, lg: LoadGen, server: Server) -> None:
    """PUT /api/v1/projects/{id} (paced) to receipt of project.updated by every client of the project."""
    prof = sess.prof
    owner = str(uuid.uuid4())
    token = make_token(owner)
    project = http_json("POST", f"{server.url}/api/v1/projects", {"name": "bench"}, token=token)
    reply = lg.connect([server.ws_url], prof.http_clients, [f"project:{project['id']}"], prof, user=owner)
    if reply["clients"] < prof.http_clients:
        raise BenchError(f"http: only {reply['clients']} of {prof.http_clients} clients connected: {reply['errors']}")

    def put(count: int = prof.http_puts) -> dict[str, Any]:
        return lg.cmd(
            "put",
            timeout=count / prof.http_rate + 60,
            url=server.url,
            token=token,
            project_id=project["id"],
            count=count,
            rate=prof.http_rate,
        )

    warm_up(lg, lambda: put(2), 2 * prof.http_clients)
    figures = sess.repeat(
        [server],
        lg,
        lambda: measure(
            [server],
            lg,
            put,
            prof.http_clients * prof.http_puts,
            quiet_s=prof.quiet_s,
            deadline_s=prof.http_puts / prof.http_rate * 3 + 10,
        ),
        prof.repeat,
    )
    figures["clients"] = prof.http_clients
    sess.record(f"http-put-{prof.http_clients}", figures)


# --- sessions -------------------------------------------------------------------------------------------------


def main_session(sess: Session, scenarios: set[str]) -> None:
    """Every scenario but Redis against one kind of server: each part on a fresh server."""
    prof = sess.prof
    lg = LoadGen(sess.opts, prof.loadgen_workers)
    try:
        if scenarios & {"idle", "rooms"}:
            with fresh_server(sess, lg) as server:
                part_idle_rooms(sess, lg, server, scenarios)
        if "storm" in scenarios:
            with fresh_server(sess, lg) as server:
                part_storm(sess, lg, server)
        sizes = sorted(prof.fanout_sizes if "fanout" in scenarios else (), reverse=True)
        for size in sizes:
            with fresh_server(sess, lg) as server:
                part_fanout(sess, lg, server, size)
                if "rate" in scenarios and size == prof.rate_clients:
                    part_rate(sess, lg, server)  # the same clients
        for size, events in prof.bursts if "burst" in scenarios else ():
            with fresh_server(sess, lg) as server:
                part_burst(sess, lg, server, size, events)
        if "rate" in scenarios and prof.rate_clients not in sizes:
            with fresh_server(sess, lg) as server:
                part_rate(sess, lg, server)
        if "single" in scenarios:
            with fresh_server(sess, lg) as server:
                part_single(sess, lg, server)
        if "http" in scenarios:
            with fresh_server(sess, lg) as server:
                part_http(sess, lg, server)
    finally:
        lg.stop()


def redis_session(sess: Session) -> None:
    prof, opts = sess.prof, sess.opts
    if not opts.redis_url:
        raise BenchError("no Redis URL")
    key = f"bench-{uuid.uuid4().hex[:12]}"
    a = Server(sess.kind, opts, redis=(opts.redis_url, key), name=f"{sess.kind}-redis-a")
    try:
        b = Server(sess.kind, opts, redis=(opts.redis_url, key), name=f"{sess.kind}-redis-b")
    except BaseException:
        a.stop()
        raise
    sess.results["_info_redis"] = a.info
    lg: LoadGen | None = None
    try:
        if sess.kind == "python":
            for server in (a, b):
                wait_ready_endpoint(server)
        lg = LoadGen(opts, prof.loadgen_workers)
        rpid = redis_pid(opts.redis_url)
        n = prof.redis_clients
        reply = lg.connect([a.ws_url, b.ws_url], n, [f"agent:{agent_id(FANOUT_AGENT)}"], prof)
        if reply["failed"]:
            raise BenchError(f"redis: {reply['failed']} connections failed: {reply['errors']}")
        time.sleep(prof.settle_s)
        emit_warm_up(lg, a, n, agent_base=FANOUT_AGENT)

        def run() -> dict[str, Any]:
            r0 = cpu_seconds(rpid) if rpid else None
            assert lg is not None
            figures = measure_paced_fanout([a, b], lg, a, n, prof.redis_events, prof.redis_interval, prof)
            if r0 is not None and rpid:
                figures["redis_cpu_s"] = round(cpu_seconds(rpid) - r0, 3)
            return figures

        sess.record(f"redis-fanout-{n}", sess.repeat([a, b], lg, run, prof.repeat))
    finally:
        if lg is not None:
            lg.stop()
        a.stop()
        b.stop()
