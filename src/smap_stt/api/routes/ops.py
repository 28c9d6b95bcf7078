"""Operations endpoints: Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import Response

from smap_stt import metrics
from smap_stt.api.auth import PUBLIC, AuthRequired
from smap_stt.api.deps import BackendsDep, SettingsDep

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the API (and, for `serve`, of its worker)",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
    openapi_extra=PUBLIC,  # no API key: METRICS_TOKEN, when set, guards it (issue 12)
)
async def prometheus_metrics(
    request: Request, settings: SettingsDep, backends: BackendsDep
) -> Response:
    token = settings.metrics_token.get_secret_value()
    if token:
        sent = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.encode()):
            raise AuthRequired("send METRICS_TOKEN as 'Authorization: Bearer TOKEN'")
    body = await metrics.render(backends)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
