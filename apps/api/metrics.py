"""The service's Prometheus metrics (``GET /metrics``, ``METRICS_PORT``; WEBSOCKET_API.md, "Metrics").

Every name starts with ``events_``; labels take a bounded set of values (an event type, a refusal
reason or code, a limit's kind), never a user, room or connection id.

- What the service's own code counts goes through the functions here: :func:`connection_opened`,
  :func:`connection_refused`, :func:`subscribed`, :func:`subscription_refused`,
  :func:`rate_limited` (the client event handlers), :func:`published` and :func:`publish_failed`
  (the broadcaster).
- What the transport counts (deliveries, dropped slow clients) are plain integers in
  :data:`apps.transport.engine_socket.stats`, which knows nothing of Prometheus, and so are the
  broadcaster's publishes (:func:`published`: one per emit, the hot path); :func:`sample` copies
  what they gained into the metrics, and sets the gauges read from the apps this process serves
  (connections open, the Redis subscription).
- :func:`start`, in an app's lifespan, watches the app's connections and, when metrics are on,
  runs the sampler (the event loop's lag every 0.1 s; :func:`sample` every second) and the
  ``METRICS_PORT`` listener.

**Several worker processes** (``WORKERS`` > 1) use prometheus-client's multiprocess mode: with
``PROMETHEUS_MULTIPROC_DIR`` set (the settings refuse ``WORKERS`` > 1 with metrics on without it),
every worker writes its values to files there and any worker's scrape adds them all up (gauges:
connections summed, Redis state the lowest, loop lag the highest, over live workers). A scrape
samples the worker that answers it at once; the others' sampled values are at most a second old.

Nothing here does I/O when imported: the metrics are created at their first use (in multiprocess
mode creating one creates its file).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import glob
import logging
import os
import re
import socket
import socketserver
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, values
from prometheus_client.exposition import ThreadingWSGIServer, choose_encoder, make_wsgi_app
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from apps.transport.engine_socket import stats as transport_stats

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from apps.api.config import Settings

logger = logging.getLogger(__name__)

#: How often the sampled values (connections, Redis state, the transport's counters) are refreshed.
SAMPLE_INTERVAL_SECONDS = 1.0
#: How often the event loop's lag is measured (each tick is a timer that should run on time).
LAG_TICK_SECONDS = 0.1
#: Seconds. Publishing is a local fan-out (tens of microseconds) or a Redis publish (a round trip).
BROADCAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: Seconds. Over 0.1 s clients notice (acks, heartbeats and deliveries all wait for the loop).
LOOP_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Label children kept, looked up by the value the code gave (an enum, a string).
MAX_CHILDREN = 4096

REDIS_UP = "events_redis_up"
REDIS_OUTBOX = "events_redis_outbox_events"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _label(value: object) -> str:
    """A label value as given when it looks like one of the code's constants, else ``other``: a
    label never takes an unbounded set of values, whatever a caller passes."""
    text = getattr(value, "value", value)  # an Enum's value
    return text if isinstance(text, str) and _LABEL_VALUE.fullmatch(text) else "other"


def multiprocess() -> bool:
    """Whether prometheus-client runs in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` was set
    when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


class _Metrics:
    """The metric objects, created once per process (:func:`_metrics`)."""

    def __init__(self) -> None:
        self.connections = Gauge(
            "events_connections", "Socket.IO connections open in namespace /ws", multiprocess_mode="livesum"
        )
        self.connections_opened = Counter("events_connections_opened", "Connections accepted in namespace /ws")
        self.connections_refused = Counter(
            "events_connections_refused", "Connections refused, by reason (an auth reason or a limit)", ["reason"]
        )
        self.subscriptions = Counter("events_subscriptions", "Room subscriptions accepted")
        self.subscriptions_refused = Counter(
            "events_subscriptions_refused", "Room subscriptions refused, by error code", ["code"]
        )
        self.rate_limited = Counter("events_rate_limited", "Requests refused by a rate limit, by kind", ["kind"])
        self.published = Counter("events_published", "Events published by this process, by type", ["type"])
        self.publish_errors = Counter(
            "events_redis_publish_errors", "Events Redis could not take (DeliveryError), by type", ["type"]
        )
        self.broadcast_seconds = Histogram(
            "events_broadcast_duration_seconds",
            "Time one publish took: local delivery, and the Redis publish when there is one",
            buckets=BROADCAST_BUCKETS,
        )
        self.deliveries = Counter(
            "events_deliveries", "Server events handed to clients' connections (one per recipient)"
        )
        self.recoveries = Counter(
            "events_recoveries",
            "Reconnections that asked to recover their session: recovered, or connected afresh (not_recovered)",
            ["result"],
        )
        self.slow_clients_dropped = Counter(
            "events_slow_clients_dropped", "WebSocket clients dropped for leaving WEBSOCKET_MAX_BUFFER_BYTES unread"
        )
        self.loop_lag = Gauge(
            "events_event_loop_lag_max_seconds",
            f"The largest event loop lag in the last {SAMPLE_INTERVAL_SECONDS:g} s",
            multiprocess_mode="livemax",
        )
        self.loop_lag_seconds = Histogram(
            "events_event_loop_lag_seconds",
            f"How late the event loop ran a timer due every {LAG_TICK_SECONDS:g} s",
            buckets=LOOP_LAG_BUCKETS,
        )
        self._redis_up: Gauge | None = None
        self._outbox: Gauge | None = None
        # label children, looked up once per value
        self._children: dict[tuple[int, object], Any] = {}

    def child(self, metric: Counter, value: object) -> Any:
        """``metric.labels(_label(value))``, looked up once per value given (the values are the
        code's constants; past :data:`MAX_CHILDREN` given values, the label is worked out again)."""
        key = (id(metric), value)
        try:
            found = self._children.get(key)
        except TypeError:  # an unhashable value: never one of the code's constants
            return metric.labels(_label(value))
        if found is None:
            found = metric.labels(_label(value))
            if len(self._children) < MAX_CHILDREN:
                self._children[key] = found
        return found

    def outbox(self) -> Gauge:
        """Created once an app with an outbox is watched."""
        if self._outbox is None:
            self._outbox = Gauge(
                REDIS_OUTBOX,
                "Events waiting in this process for Redis to take them (connection state recovery's outbox)",
                multiprocess_mode="livesum",
            )
        return self._outbox

    def redis_up(self) -> Gauge:
        """Created once an app with Redis is watched: a service without Redis exports none."""
        if self._redis_up is None:
            self._redis_up = Gauge(
                REDIS_UP,
                "1 while the Redis subscription is live (events from other instances arrive), else 0",
                multiprocess_mode="livemin",
            )
        return self._redis_up


@functools.cache
def _metrics() -> _Metrics:
    disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside every counter and histogram
    return _Metrics()


# --- what the service's code calls ---------------------------------------------------------


def connection_opened() -> None:
    """A connection joined ``/ws`` (its connect handler accepted it)."""
    _metrics().connections_opened.inc()


def connection_refused(reason: object) -> None:
    """A connection refused: ``reason`` is the auth reason (``expired``, ``bad_signature``, ...) or
    the refusal's code (``invalid_namespace``, ``server_full``, ...)."""
    _metrics().child(_metrics().connections_refused, reason).inc()


def subscribed() -> None:
    """A ``subscribe`` succeeded."""
    _metrics().subscriptions.inc()


def subscription_refused(code: object) -> None:
    """A ``subscribe`` was answered with an error: ``code`` is its ``ErrorCode``."""
    _metrics().child(_metrics().subscriptions_refused, code).inc()


def rate_limited(kind: object) -> None:
    """A rate limit refused something: ``kind`` names the limit (``client_events``, ``connects``)."""
    _metrics().child(_metrics().rate_limited, kind).inc()


class _PublishTally:
    """What the broadcaster published, in plain numbers: an emit adds one to its type's count and
    to the bucket its duration falls in, under one lock (where the counter and the histogram take
    three and the histogram walks its buckets: a sixth of the Python of an emit to one connection).
    :func:`sample` adds what they gained to the metrics, as it does the transport's counters; a
    scrape samples first, so it shows every publish before it, and an app's :meth:`Running.stop`
    adds the last ones."""

    __slots__ = ("buckets", "counts", "lock", "seconds")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[object, int] = {}
        #: as ``Histogram._buckets``: the count in each of :data:`BROADCAST_BUCKETS`, then +Inf
        self.buckets = [0] * (len(BROADCAST_BUCKETS) + 1)
        self.seconds = 0.0

    def add(self, event_type: object, seconds: float) -> bool:
        """Count one publish; False (nothing counted) for a type it does not keep: unhashable, or
        past :data:`MAX_CHILDREN` types (never one of the code's constants)."""
        # the histogram's bucket: the first bound at or above ``seconds``, as Histogram.observe finds it
        bucket = bisect_left(BROADCAST_BUCKETS, seconds)
        with self.lock:
            counts = self.counts
            try:
                counts[event_type] += 1
            except KeyError:
                if len(counts) >= MAX_CHILDREN:
                    return False
                counts[event_type] = 1
            except TypeError:
                return False
            self.buckets[bucket] += 1
            self.seconds += seconds
        return True

    def snapshot(self) -> tuple[dict[object, int], list[int], float]:
        with self.lock:
            return dict(self.counts), list(self.buckets), self.seconds


_tally = _PublishTally()
#: what :func:`sample` has added to the metrics so far (read and written under ``_lock``)
_tally_seen: tuple[dict[object, int], list[int], float] = ({}, [0] * (len(BROADCAST_BUCKETS) + 1), 0.0)


def published(event_type: object, seconds: float) -> None:
    """The broadcaster sent an event (``seconds``: how long the send took). In a process that
    serves an app (:func:`start`), into the tally; in any other (a worker publishing through
    Redis, which no sampler flushes), into the metrics at once."""
    if not (_watched and _tally.add(event_type, seconds)):
        metrics = _metrics()
        metrics.child(metrics.published, event_type).inc()
        metrics.broadcast_seconds.observe(seconds)


def _add_published(metrics: _Metrics) -> None:
    """Add to the metrics what :data:`_tally` gained since the last time (under ``_lock``). What
    is taken is marked as added first: a failure loses that batch rather than adding it again
    at every later sample."""
    global _tally_seen
    counts, buckets, seconds = _tally.snapshot()
    seen_counts, seen_buckets, seen_seconds = _tally_seen
    _tally_seen = (counts, buckets, seconds)
    for event_type, count in counts.items():
        gained = count - seen_counts.get(event_type, 0)
        if gained:
            metrics.child(metrics.published, event_type).inc(gained)
    histogram = metrics.broadcast_seconds
    for i, count in enumerate(buckets):
        if count != seen_buckets[i]:
            # Histogram.observe's own update, for many observations at once (prometheus-client
            # has no public call for it); test_metrics holds the result to observe's
            histogram._buckets[i].inc(count - seen_buckets[i])
    if seconds != seen_seconds:
        histogram._sum.inc(seconds - seen_seconds)


def _flush_published() -> None:
    """:func:`_add_published`, logged rather than raised: what else is sampled still is."""
    try:
        with _lock:
            _add_published(_metrics())
    except Exception:
        logger.exception("metrics: adding the publishes failed")


def publish_failed(event_type: object) -> None:
    """The broadcaster could not send an event: Redis could not take it (``DeliveryError``)."""
    _metrics().child(_metrics().publish_errors, event_type).inc()


# --- sampled values --------------------------------------------------------------------------


@dataclass(eq=False)
class _Watched:
    """An app of this process: its connections, and whether its Redis subscription is live (None
    without Redis)."""

    connections: Sized
    redis_live: Callable[[], bool] | None
    outbox: Callable[[], int] | None = None


_watched: list[_Watched] = []
_lock = threading.Lock()  # the sampler (event loop) and the METRICS_PORT listener (a thread) sample
_seen = {"deliveries": 0, "slow_clients_dropped": 0, "recovered": 0, "not_recovered": 0}


def sample() -> None:
    """Refresh what is sampled rather than counted as it happens: the transport's counters (what
    they gained since the last sample), connections open, the Redis subscription."""
    _flush_published()
    with _lock:
        metrics = _metrics()
        for name, counter in (
            ("deliveries", metrics.deliveries),
            ("slow_clients_dropped", metrics.slow_clients_dropped),
            ("recovered", metrics.child(metrics.recoveries, "recovered")),
            ("not_recovered", metrics.child(metrics.recoveries, "not_recovered")),
        ):
            now = getattr(transport_stats, name)
            if now > _seen[name]:
                counter.inc(now - _seen[name])
            _seen[name] = now
        watched = list(_watched)
        metrics.connections.set(sum(len(app.connections) for app in watched))
        live = [app.redis_live() for app in watched if app.redis_live is not None]
        if live:
            metrics.redis_up().set(1 if all(live) else 0)
        waiting = [app.outbox() for app in watched if app.outbox is not None]
        if waiting:
            metrics.outbox().set(sum(waiting))


async def _sampler() -> None:
    """Every :data:`LAG_TICK_SECONDS`: how late the loop ran this tick (its lag: while a callback
    blocks the loop, every client waits), into the histogram; every :data:`SAMPLE_INTERVAL_SECONDS`:
    the worst lag of those ticks into the gauge, then :func:`sample`. A block of the loop longer
    than a tick always shows, as a tick at least that much shorter late."""
    loop = asyncio.get_running_loop()
    metrics = _metrics()
    worst, ticks, per_sample = 0.0, 0, round(SAMPLE_INTERVAL_SECONDS / LAG_TICK_SECONDS)
    while True:
        due = loop.time() + LAG_TICK_SECONDS
        await asyncio.sleep(LAG_TICK_SECONDS)
        lag = max(loop.time() - due, 0.0)
        metrics.loop_lag_seconds.observe(lag)
        worst, ticks = max(worst, lag), ticks + 1
        if ticks < per_sample:
            continue
        metrics.loop_lag.set(worst)
        worst, ticks = 0.0, 0
        try:
            sample()
        except Exception:  # never let a metrics problem stop the sampling
            logger.exception("metrics: sampling failed")


# --- scraping --------------------------------------------------------------------------------


def _prune_dead_workers(path: str) -> None:
    """Forget the gauges of worker processes that are gone (a worker that crashed never said so):
    their connections are no longer open. Their counts stay (counters and histograms only grow)."""
    pids: set[int] = set()
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        number = os.path.basename(name)[: -len(".db")].rsplit("_", 1)[-1]
        if number.isdigit():
            pids.add(int(number))
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, another user's
            pass


class _Scrape(Collector):
    """What a scrape returns: this process's metrics (and prometheus-client's process and Python
    collectors), or in multiprocess mode every worker's, added up; sampled first."""

    def collect(self) -> Iterable[Metric]:
        sample()
        if not multiprocess():
            return REGISTRY.collect()
        path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        _prune_dead_workers(path)
        merged: Iterable[Metric] = MultiProcessCollector(None, path=path).collect()  # type: ignore[no-untyped-call]
        return merged


SCRAPE_REGISTRY = CollectorRegistry(auto_describe=False)
SCRAPE_REGISTRY.register(_Scrape())


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The scrape's body and content type, in the format the ``Accept`` header asks for
    (Prometheus' text format unless it asks for OpenMetrics)."""
    _metrics()
    encoder, content_type = choose_encoder(accept or "")
    return encoder(SCRAPE_REGISTRY), content_type


# --- METRICS_PORT ----------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No access line per scrape."""


def _listener(host: str, port: int) -> ThreadingWSGIServer:
    """A small HTTP server (a thread of its own) answering every path with the scrape, without a
    token. In multiprocess mode every worker binds the port (SO_REUSEPORT): whichever answers, the
    scrape is the same sum."""
    family = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0][0]
    reuse_port = multiprocess()

    class Server(ThreadingWSGIServer):
        address_family = family
        allow_reuse_port = reuse_port

        def server_bind(self) -> None:
            # WSGIServer's, without the reverse DNS lookup of the host (socket.getfqdn)
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = host or "localhost", int(self.server_address[1])
            self.setup_environ()

    return make_server(host, port, make_wsgi_app(SCRAPE_REGISTRY), Server, handler_class=_QuietHandler)


# --- an app's lifespan -----------------------------------------------------------------------


@dataclass(eq=False)
class Running:
    """What :func:`start` started for one app; :meth:`stop` ends it."""

    watched: _Watched
    sampler: asyncio.Task[None] | None = None
    listener: ThreadingWSGIServer | None = None

    @property
    def port(self) -> int | None:
        """The METRICS_PORT listener's port (the one bound, when METRICS_PORT=0)."""
        return None if self.listener is None else int(self.listener.server_address[1])

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            _watched.remove(self.watched)
        _flush_published()  # the last publishes, before a worker's files are marked dead
        if self.sampler is not None:
            self.sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.sampler
        if self.listener is not None:
            await asyncio.to_thread(self.listener.shutdown)
            self.listener.server_close()
        if multiprocess() and not _watched:
            # this worker's connections, Redis state and loop lag leave the sums at once
            mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def enabled(settings: Settings) -> bool:
    return settings.metrics_token is not None or settings.metrics_port is not None


async def start(
    settings: Settings,
    connections: Sized,
    redis_live: Callable[[], bool] | None = None,
    outbox: Callable[[], int] | None = None,
) -> Running:
    """Watch an app's ``connections`` (and its Redis subscription); with metrics on, also start
    the sampler, and the ``METRICS_PORT`` listener when it is set."""
    running = Running(_Watched(connections, redis_live, outbox))
    _watched.append(running.watched)
    if not enabled(settings):
        return running
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if multiprocess() and not await asyncio.to_thread(os.path.isdir, directory):
        await running.stop()
        raise RuntimeError(f"PROMETHEUS_MULTIPROC_DIR={directory} is not a directory")
    _metrics()
    running.sampler = asyncio.create_task(_sampler())
    if settings.metrics_port is not None:
        try:
            running.listener = _listener(settings.host, settings.metrics_port)
        except OSError as exc:
            await running.stop()
            logger.error(
                "metrics: cannot listen on %s:%d (%s): not starting", settings.host, settings.metrics_port, exc
            )
            raise
        threading.Thread(target=running.listener.serve_forever, name="metrics-listener", daemon=True).start()
        logger.info("metrics served on http://%s:%d/metrics (no token)", settings.host, running.port)
    return running


def metric_names() -> list[str]:
    """The names of the metrics a scrape shows, as it shows them (counters with ``_total``; a
    histogram's ``_bucket``, ``_sum`` and ``_count`` under its name), ``events_redis_up``
    included (shown only by a service with Redis)."""
    names = [REDIS_UP, REDIS_OUTBOX]
    for value in vars(_metrics()).values():
        name, kind = getattr(value, "_name", None), getattr(value, "_type", None)
        if isinstance(name, str) and name not in (REDIS_UP, REDIS_OUTBOX):
            names.append(f"{name}_total" if kind == "counter" else name)
    return sorted(names)
