"""Operations endpoints: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from smap_stt import metrics
from smap_stt.api.deps import BackendsDep

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics of the API (and, for `serve`, of its worker)",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def prometheus_metrics(backends: BackendsDep) -> Response:
    body = await metrics.render(backends)
    return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)
