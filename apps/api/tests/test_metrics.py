"""GET /metrics and METRICS_PORT: off unless configured, the token compared whole, what the service
counts (in-process apps, and server processes of their own, where every count is exact), and
several workers counted in one scrape (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from apps.api import metrics
from apps.api.app import create_app
from apps.api.events.broadcaster import get_broadcaster
from apps.api.tests.postgres_support import fresh_database
from apps.api.tests.redis_support import isolation, own_redis
from apps.api.tests.support import (
    REPO_ROOT,
    ConnectRefused,
    RunningServer,
    ServerProcess,
    WsClient,
    eventually,
    free_port,
    make_token,
    raw_subscriber,
    register_secret,
    serve_in_process,
    start_server_process,
)
from apps.api.tests.support import (
    test_settings as settings_for,
)
from apps.api.tests.test_docs_run import doc_block, run
from apps.api.tests.test_redis_fanout import server_env

METRICS_TOKEN = register_secret(f"metrics-{uuid4().hex}")


def parse(text: str) -> dict[str, float]:
    """A scrape's samples by name and labels: ``events_published_total{type="agent.connected"}``."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def scrape(url: str, token: str | None = METRICS_TOKEN) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{url}/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(response.text)


def lag_over(samples: dict[str, float], seconds: str) -> float:
    """Sampler ticks the event loop ran more than ``seconds`` late."""
    total = samples["events_event_loop_lag_seconds_count"]
    return total - samples[f'events_event_loop_lag_seconds_bucket{{le="{seconds}"}}']


@pytest.fixture
async def metered() -> AsyncIterator[RunningServer]:
    """An in-process service with METRICS_TOKEN (counts here are the process's: compare deltas)."""
    app = create_app(settings_for(metrics_token=METRICS_TOKEN, websocket_max_buffer_bytes=1_000_000))
    async with serve_in_process(app) as running:
        yield running


async def test_metrics_are_off_unless_configured(server: RunningServer, http: httpx.AsyncClient):
    """The default: GET /metrics is 404, as any unknown path (a token changes nothing), no
    sampler runs and no port is opened."""
    for headers in ({}, {"Authorization": f"Bearer {METRICS_TOKEN}"}):
        response = await http.get("/metrics", headers=headers)
        assert response.status_code == 404
        assert response.json() == (await http.get("/no-such-path")).json()
    observed = server.app.state.metrics
    assert observed.sampler is None and observed.listener is None


async def test_with_metrics_token_a_scrape_needs_all_of_it(metered: RunningServer):
    async with httpx.AsyncClient(base_url=metered.url, timeout=5) as http:
        for authorization in (
            None,
            "Bearer",
            "Bearer wrong",
            f"Bearer {METRICS_TOKEN[:-1]}",
            f"Bearer {METRICS_TOKEN}x",
            f"Basic {METRICS_TOKEN}",
            METRICS_TOKEN,
        ):
            response = await http.get("/metrics", headers={"Authorization": authorization} if authorization else {})
            assert response.status_code == 401, authorization
            assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert response.json()["error"]["code"] == "AUTH_FAILED"
            assert METRICS_TOKEN not in response.text
        response = await http.get("/metrics", headers={"Authorization": f"bearer {METRICS_TOKEN}"})
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        families = {family.name for family in text_string_to_metric_families(response.text)}
        openmetrics = await http.get(
            "/metrics",
            headers={"Authorization": f"Bearer {METRICS_TOKEN}", "Accept": "application/openmetrics-text"},
        )
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")
    exposed = {re.sub(r"_total$", "", name) for name in metrics.metric_names()} - {
        metrics.REDIS_UP,
        metrics.REDIS_OUTBOX,
    }
    assert exposed <= families  # every metric, labelled ones included, before anything was counted
    assert metrics.REDIS_UP not in families and metrics.REDIS_OUTBOX not in families  # no Redis: no Redis state
    assert "process_resident_memory_bytes" in families  # prometheus-client's own process metrics


async def test_metrics_port_serves_them_without_a_token():
    """METRICS_PORT alone: a listener of its own without a token; the service's port has no
    /metrics (404). 0 takes any free port (app.state.metrics.port says which)."""
    app = create_app(settings_for(metrics_port=0, host="127.0.0.1"))
    async with serve_in_process(app) as running, httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{running.url}/metrics")).status_code == 404  # (answered: the app has started)
        port = app.state.metrics.port
        assert port and port != running.port
        samples = await scrape(f"http://127.0.0.1:{port}", token=None)
        assert "events_connections" in samples
    async with httpx.AsyncClient(timeout=2) as http:
        with pytest.raises(httpx.ConnectError):  # the listener went with the app
            await http.get(f"http://127.0.0.1:{port}/metrics")


async def test_what_the_client_event_handlers_report_is_counted_with_bounded_labels(metered: RunningServer):
    """The functions apps/api/websocket/events.py calls. A label value that does not look like one
    of the code's constants is counted as ``other``: no caller can make labels without bound."""
    before = await scrape(metered.url)
    metrics.connection_opened()
    metrics.connection_refused("expired")
    metrics.connection_refused("expired")
    metrics.connection_refused("x" * 200)
    metrics.connection_refused("user 660e8400 with spaces")
    metrics.subscribed()
    metrics.subscription_refused("ROOM_ACCESS_DENIED")
    metrics.rate_limited("client_events")
    after = await scrape(metered.url)

    def gained(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert gained("events_connections_opened_total") == 1
    assert gained('events_connections_refused_total{reason="expired"}') == 2
    assert gained('events_connections_refused_total{reason="other"}') == 2
    assert gained("events_subscriptions_total") == 1
    assert gained('events_subscriptions_refused_total{code="ROOM_ACCESS_DENIED"}') == 1
    assert gained('events_rate_limited_total{kind="client_events"}') == 1
    assert not [name for name in after if "x" * 65 in name or "spaces" in name]


async def test_a_dropped_slow_client_is_counted(metered: RunningServer):
    """The transport's drop (WEBSOCKET_MAX_BUFFER_BYTES, 1 MB here) reaches the scrape."""
    agent = uuid4()
    room = f"agent:{agent}"
    before = await scrape(metered.url)
    async with (
        httpx.AsyncClient(base_url=metered.url, timeout=5) as http,
        raw_subscriber(metered, http, make_token(), room),
    ):
        for i in range(400):  # 20 MB to a client that reads nothing: past the socket buffers and the 1 MB
            await get_broadcaster().broadcast_agent_status_changed(
                agent_id=agent, agent_name=f"{i}", status="busy", availability=50, current_task="x" * 50_000
            )

        async def dropped() -> float:
            gained = (await scrape(metered.url))["events_slow_clients_dropped_total"]
            return gained - before["events_slow_clients_dropped_total"]

        assert await eventually(dropped, what="the slow client's drop counted") == 1


async def test_the_event_loop_lag_is_measured(metered: RunningServer):
    """A callback that blocks the loop for 0.3 s shows: a lag tick (every 0.1 s) runs over 0.1 s late."""
    before = lag_over(await scrape(metered.url), "0.1")
    time.sleep(0.3)  # noqa: ASYNC251 - the stimulus: block the event loop the service runs in (this test's)

    async def seen() -> bool:
        return lag_over(await scrape(metered.url), "0.1") > before

    await eventually(seen, what="a lag tick over 0.1 s late")


# --- server processes of their own: exact counts ------------------------------------------------


async def service_process(redis_url: str, **extra: str) -> ServerProcess:
    env = server_env(redis_url, isolation(), PORT=str(free_port()), METRICS_TOKEN=METRICS_TOKEN, **extra)
    return await start_server_process([sys.executable, "apps/api/main.py"], env=env)


async def publish(url: str, agent: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        return await http.post(
            "/api/v1/events",
            headers={"Authorization": f"Bearer {make_token(roles=['service'])}"},
            json={"type": "agent.connected", "data": {"agent_id": agent, "agent_name": "metrics"}},
        )


async def test_a_service_counts_connections_deliveries_and_publishes(redis_url: str):
    metrics_port = free_port()
    service = await service_process(redis_url, METRICS_PORT=str(metrics_port))
    clients: list[WsClient] = []
    try:
        agent = str(uuid4())
        for _ in range(3):
            client = await WsClient(service.url).connect(make_token())
            clients.append(client)
            await client.expect("connection_established")
            assert (await client.call("subscribe", {"room": f"agent:{agent}"}))["status"] == "success"
        with pytest.raises(ConnectRefused):  # a token signed with another key
            await WsClient(service.url).connect(make_token(secret="another-secret-of-at-least-32-bytes!"))
        refused = await clients[0].call("subscribe", {"room": f"user:{uuid4()}"})  # another user's room
        assert refused["code"] == "ROOM_ACCESS_DENIED"
        samples = await scrape(service.url)
        assert samples["events_connections"] == 3
        assert samples["events_connections_opened_total"] == 3
        assert samples['events_connections_refused_total{reason="bad_signature"}'] == 1
        assert samples["events_subscriptions_total"] == 3
        assert samples['events_subscriptions_refused_total{code="ROOM_ACCESS_DENIED"}'] == 1
        assert samples["events_deliveries_total"] == 3  # the welcomes (acks are answers, not deliveries)
        assert samples["events_redis_up"] == 1
        assert (await publish(service.url, agent)).status_code == 202
        for client in clients:
            assert (await client.expect("agent.connected"))["data"]["agent_id"] == agent
        samples = await scrape(service.url)
        assert samples['events_published_total{type="agent.connected"}'] == 1
        assert samples["events_broadcast_duration_seconds_count"] == 1
        assert 0 < samples["events_broadcast_duration_seconds_sum"] < 2
        assert samples["events_deliveries_total"] == 6
        assert samples.get('events_redis_publish_errors_total{type="agent.connected"}', 0) == 0
        # METRICS_PORT: the same, without a token
        assert (await scrape(f"http://127.0.0.1:{metrics_port}", token=None))["events_deliveries_total"] == 6
        await clients.pop().close()

        async def two_left() -> bool:
            return (await scrape(service.url))["events_connections"] == 2

        await eventually(two_left, what="the closed connection no longer counted")

        async def ticked() -> dict[str, float]:
            samples = await scrape(service.url)
            return samples if samples["events_event_loop_lag_seconds_count"] >= 1 else {}

        samples = await eventually(ticked, what="a sampler tick")
        assert samples["events_event_loop_lag_seconds_sum"] < samples["events_event_loop_lag_seconds_count"] * 0.1
        assert samples["events_event_loop_lag_max_seconds"] < 1
    finally:
        for client in clients:
            await client.close()
        await service.stop()


async def test_redis_going_away_shows_in_the_redis_state_and_the_publish_errors():
    async with own_redis() as redis:
        service = await service_process(redis.url)
        try:
            assert (await scrape(service.url))["events_redis_up"] == 1
            await redis.stop()

            async def down() -> bool:
                return (await scrape(service.url))["events_redis_up"] == 0

            await eventually(down, what="events_redis_up 0")
            # recovery on (the default): the event waits in the outbox rather than fail
            assert (await publish(service.url, str(uuid4()))).status_code == 202

            async def waiting() -> bool:
                return (await scrape(service.url)).get("events_redis_outbox_events") == 1

            await eventually(waiting, what="one event in the outbox")
            await redis.start()

            async def up() -> bool:
                samples = await scrape(service.url)
                return samples["events_redis_up"] == 1 and samples["events_redis_outbox_events"] == 0

            await eventually(up, timeout=20, what="events_redis_up 1 again and the outbox empty")
            samples = await scrape(service.url)
            assert samples.get('events_redis_publish_errors_total{type="agent.connected"}', 0) == 0
        finally:
            await service.stop()


async def test_several_workers_are_counted_in_one_scrape(redis_url: str, tmp_path: Path):
    """WORKERS=2: prometheus-client's multiprocess mode. Connections made to both workers are all
    in one scrape, whichever worker answers it (the service port's /metrics or METRICS_PORT)."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    metrics_port = free_port()
    async with fresh_database() as database:
        env = server_env(
            redis_url,
            {**isolation(), "DATABASE_URL": database},
            PORT=str(free_port()),
            WORKERS="2",
            METRICS_TOKEN=METRICS_TOKEN,
            METRICS_PORT=str(metrics_port),
            PROMETHEUS_MULTIPROC_DIR=str(directory),
        )
        service = await start_server_process(
            [sys.executable, "apps/api/main.py"], env=env, ready="Application startup complete", ready_count=2
        )
        clients: list[WsClient] = []
        try:
            workers: dict[str, int] = {}
            for _ in range(40):  # the kernel spreads connections over the workers; stop once both have some
                client = await WsClient(service.url).connect(make_token())
                clients.append(client)
                instance = (await client.expect("connection_established"))["data"]["instance_id"]
                workers[instance] = workers.get(instance, 0) + 1
                if len(workers) == 2 and len(clients) >= 4:
                    break
            assert len(workers) == 2, "every connection landed on one worker"
            expected = {"events_connections": len(clients), "events_deliveries_total": len(clients)}

            async def all_counted() -> bool:
                samples = await scrape(service.url)
                return all(samples[name] == value for name, value in expected.items())

            # the worker answering samples itself at once; the other's values are a tick (1 s) old at most
            await eventually(all_counted, what=f"{expected} in one scrape ({workers} per worker)")
            for _ in range(6):  # whichever worker answers, on either port: the same sums
                for url, token in ((service.url, METRICS_TOKEN), (f"http://127.0.0.1:{metrics_port}", None)):
                    samples = await scrape(url, token)
                    assert {name: samples[name] for name in expected} == expected
            pids = {path.stem.rsplit("_", 1)[-1] for path in directory.glob("gauge_livesum_*.db")}
            assert len(pids) == 2, pids
            for client in clients:
                await client.close()
            clients = []

            async def none_left() -> bool:
                return (await scrape(service.url))["events_connections"] == 0

            await eventually(none_left, what="no connection counted once all closed")
        finally:
            for client in clients:
                await client.close()
            await service.stop()


def test_several_workers_with_metrics_need_a_multiprocess_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    def settings(**values: Any) -> Any:
        base = {
            "workers": 2,
            "redis_url": "redis://127.0.0.1:6379",
            "database_url": "postgresql+asyncpg://postgres@127.0.0.1/events",
        }
        return settings_for(**{**base, **values})

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert settings().workers == 2  # metrics off: nothing to share
    for on in ({"metrics_token": METRICS_TOKEN}, {"metrics_port": 9100}):
        with pytest.raises(ValidationError, match="needs PROMETHEUS_MULTIPROC_DIR"):
            settings(**on)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    assert settings(metrics_token=METRICS_TOKEN, metrics_port=9100).metrics_port == 9100


def test_metrics_settings_are_checked():
    assert settings_for(metrics_token="", metrics_port="").metrics_token is None
    with pytest.raises(ValidationError, match="METRICS_PORT must differ from PORT"):
        settings_for(metrics_port=8000, port=8000)
    production = {"environment": "production", "jwt_secret_key": "k" * 32, "cors_origins": "https://a.example"}
    with pytest.raises(ValidationError, match="METRICS_TOKEN is shorter than 16 characters"):
        settings_for(**production, metrics_token="short")
    assert settings_for(**production, metrics_token=METRICS_TOKEN).metrics_token is not None


def test_the_docs_list_every_metric():
    """WEBSOCKET_API.md's Metrics table names each metric a scrape shows, and no other."""
    section = (REPO_ROOT / "WEBSOCKET_API.md").read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `(events_[a-z_]+)`", section, flags=re.MULTILINE))
    assert listed == set(metrics.metric_names())


async def test_the_docs_scrape_example(metered: RunningServer):
    client = await WsClient(metered.url).connect(make_token())
    try:
        await client.expect("connection_established")
        output = await run(
            ["bash", "-c", doc_block("test_the_docs_scrape_example")],
            {"METRICS_TOKEN": METRICS_TOKEN, "EVENTS_URL": metered.url},
        )
    finally:
        await client.close()
    assert re.fullmatch(r"events_connections [1-9][0-9]*\.0\n", output), output


def _histogram_samples(histogram: Any) -> dict[str, float]:
    return {
        f"{s.name}{s.labels.get('le', '')}": s.value
        for family in histogram.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _published(event_type: str) -> float:
    return REGISTRY.get_sample_value("events_published_total", {"type": event_type}) or 0.0


def _count() -> float:
    return _histogram_samples(metrics._metrics().broadcast_seconds)["events_broadcast_duration_seconds_count"]


@pytest.fixture
def serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process serves an app (as :func:`metrics.start` records it): publishes go to the tally."""
    monkeypatch.setattr(metrics, "_watched", [metrics._Watched(connections=[], redis_live=None)])


def test_publishes_are_counted_as_the_counter_and_the_histogram_would_count_them(serving: None):
    """The broadcaster's publishes go into a plain tally that :func:`metrics.sample` adds to the
    metrics (prometheus-client has no call that adds many observations to a histogram: it writes
    into the histogram's buckets and sum, as ``observe`` does). What a scrape shows must be what
    the counter and ``observe`` would show for the same publishes: this fails if prometheus-client's
    histogram changes inside."""
    from prometheus_client import CollectorRegistry, Histogram

    from apps.api.websocket.models import EventType

    bounds = metrics.BROADCAST_BUCKETS
    durations = [0.0, 1e-9, *bounds, *(b * 0.999 for b in bounds), *(b * 1.001 for b in bounds), 7.5, 1e6]
    reference = Histogram("reference", "observe's own result", buckets=bounds, registry=CollectorRegistry())
    ours = metrics._metrics().broadcast_seconds
    metrics.sample()
    before = _histogram_samples(ours)
    published_before = _published("pr.closed")
    for seconds in durations:
        metrics.published(EventType.PR_CLOSED, seconds)
        reference.observe(seconds)
    unchanged = _histogram_samples(ours)
    metrics.sample()
    after = _histogram_samples(ours)
    gained = {name.removeprefix("events_broadcast_duration_seconds"): after[name] - before[name] for name in after}
    expected = {name.removeprefix("reference"): value for name, value in _histogram_samples(reference).items()}
    assert gained.keys() == expected.keys()
    for name, value in expected.items():
        assert gained[name] == pytest.approx(value, rel=1e-9, abs=1e-9), name
    assert expected["_count"] == len(durations)
    assert unchanged == before  # nothing shows before a sample (a scrape samples first)
    assert _published("pr.closed") - published_before == len(durations)
    metrics.sample()
    assert _histogram_samples(ours) == after  # a second sample adds nothing


def test_a_publish_of_a_type_the_tally_cannot_keep_is_counted_at_once(serving: None, monkeypatch: pytest.MonkeyPatch):
    metrics.sample()
    count, other = _count(), _published("other")
    metrics.published(["not", "hashable"], 0.001)  # never what the broadcaster passes
    assert (_count(), _published("other")) == (count + 1, other + 1)
    monkeypatch.setattr(metrics, "MAX_CHILDREN", len(metrics._tally.counts))  # the tally is full
    metrics.published("type.new_to_the_tally", 0.001)
    assert _count() == count + 2
    assert _published("type.new_to_the_tally") == 1
    metrics.sample()
    assert _count() == count + 2  # counted once


def test_a_process_that_serves_no_app_counts_each_publish_at_once(monkeypatch: pytest.MonkeyPatch):
    """A worker publishing through Redis runs no sampler: its publishes go to the metrics as they
    happen (in multiprocess mode, to the shared files the service's scrape adds up)."""
    monkeypatch.setattr(metrics, "_watched", [])
    count, before = _count(), _published("agent.connected")
    metrics.published("agent.connected", 0.002)
    assert (_count(), _published("agent.connected")) == (count + 1, before + 1)


async def test_an_app_that_stops_adds_its_last_publishes():
    running = await metrics.start(settings_for(), connections=[])  # metrics off: no sampler runs
    try:
        assert running.sampler is None
        metrics.sample()
        count = _count()
        metrics.published("agent.disconnected", 0.003)
        assert _count() == count  # in the tally
    finally:
        await running.stop()
    assert _count() == count + 1


def test_a_failure_adding_the_publishes_loses_that_batch_and_nothing_else(
    serving: None, monkeypatch: pytest.MonkeyPatch
):
    def deliveries() -> float:  # not through REGISTRY, which would collect the broken histogram too
        return next(
            s.value for f in metrics._metrics().deliveries.collect() for s in f.samples if s.name.endswith("_total")
        )

    metrics.sample()
    count, delivered = _count(), deliveries()
    metrics.published("agent.connected", 0.001)
    histogram = metrics._metrics().broadcast_seconds

    class Broken:
        def inc(self, amount: float) -> None:
            raise OSError("the multiprocess file cannot grow")

    sum_value = histogram._sum
    monkeypatch.setattr(histogram, "_sum", Broken())
    from apps.transport.engine_socket import stats

    monkeypatch.setattr(stats, "deliveries", stats.deliveries + 5)
    metrics.sample()  # logged, not raised; the rest is still sampled
    assert deliveries() == delivered + 5
    monkeypatch.setattr(histogram, "_sum", sum_value)
    metrics.sample()
    metrics.sample()
    assert _count() == count + 1  # the batch's counts went in once, and are never added again
