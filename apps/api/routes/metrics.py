"""``GET /metrics``: the service's Prometheus metrics (:mod:`apps.api.metrics`), in Prometheus'
text format (OpenMetrics when the scraper asks for it).

Off unless ``METRICS_TOKEN`` is set: then a scraper sends ``Authorization: Bearer <METRICS_TOKEN>``
(compared in constant time) and anything else gets 401. Without it the route answers 404, as any
unknown path does. ``METRICS_PORT`` serves the same metrics without a token on a port of its own
(:func:`apps.api.metrics.start`), for a network only the scraper reaches.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response

from apps.api import metrics
from apps.api.errors import ApiError

router = APIRouter(tags=["metrics"])


def _authorized(request: Request, token: str) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    # compared whole, in constant time: how much of a guess matched never shows in the timing
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.strip().encode(), token.encode())


@router.get("/metrics", include_in_schema=False)
async def scrape(request: Request) -> Response:
    token = request.app.state.settings.metrics_token
    if token is None:
        raise ApiError(404, "Not Found")
    if not _authorized(request, token.get_secret_value()):
        raise ApiError(
            401,
            "GET /metrics needs Authorization: Bearer <METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
        )
    body, content_type = metrics.exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)
