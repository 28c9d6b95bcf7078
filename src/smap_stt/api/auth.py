"""Who may call the API: one dependency resolves the principal of every request, once.

It is installed on the whole application, so a new route is protected unless it is marked
`openapi_extra=PUBLIC`. A request is served as:
- the key it sends (`Authorization: Bearer KEY` or `X-API-Key: KEY`), looked up in the job
  store on every request so that a revoked key stops working at once on every API process;
- a signed URL (`?expires=…&signature=…`) on the few GET routes the page links to (audio and
  downloads), which browsers cannot send headers for;
- `OPEN` while the API is open (AUTH=off, or AUTH=auto and no key exists): everything, as the
  original system did. A state-changing request from a browser page of another origin is then
  refused (403), so a web page cannot submit or cancel jobs through a visitor's browser.

Unknown, malformed and revoked keys get the same 401 after the same work (one lookup, one
hash, one constant-time comparison).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import BaseRoute

from smap_stt import limits
from smap_stt.backends import Backends
from smap_stt.config import Settings
from smap_stt.errors import InvalidRequest
from smap_stt.keys import OPEN, Principal, key_matches, parse_key, sign_url, verify_signature

__all__ = [
    "AUTHENTICATE",
    "PUBLIC",
    "SIGNABLE_ROUTES",
    "AuthRequired",
    "PrincipalDep",
    "auth_enabled",
    "authenticate",
    "install",
    "is_public",
    "signed",
    "warn_while_open",
]

log = logging.getLogger(__name__)

SIGNABLE_ROUTES = frozenset({"/api/v1/tasks/{job_id}/audio", "/api/v1/tasks/{job_id}/download"})
"""GET routes a signed URL opens instead of a key: what the page's <audio> and links use."""

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNKNOWN_ID = "000000000000"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="smap-stt"'}


class AuthRequired(InvalidRequest):
    """401: no valid credentials. The handler adds `WWW-Authenticate`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=401)
        self.headers = dict(_CHALLENGE)


PUBLIC: dict[str, Any] = {"security": []}
"""`openapi_extra=PUBLIC` opens a route to everyone (health, metrics, the page). It is what
OpenAPI itself says for "no credentials needed", and the dependency reads the same mark."""


def is_public(route: object) -> bool:
    extra = getattr(route, "openapi_extra", None)
    return isinstance(extra, dict) and extra.get("security") == []


def _credential(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("x-api-key", "").strip()
    return key or None


def _app_path(request: Request) -> str:
    path = request.url.path
    root = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def signing_secret(request: Request) -> bytes:
    """URL_SIGNING_SECRET, or the random one every process finds in the job store."""
    state = request.app.state
    cached: bytes | None = getattr(state, "signing_secret", None)
    if cached is not None:
        return cached
    settings: Settings = state.settings
    configured = settings.url_signing_secret.get_secret_value()
    if configured:
        secret = configured.encode()
    else:
        backends: Backends = state.backends
        stored = await backends.store.shared_secret("url-signing", secrets.token_hex(32))
        secret = bytes.fromhex(stored)
    state.signing_secret = secret
    return secret


async def signed(request: Request, url: str) -> tuple[str, int]:
    """`url` (an app path such as /api/v1/tasks/ID/download?format=srt) signed for
    SIGNED_URL_SECONDS, and its expiry as unix time."""
    settings: Settings = request.app.state.settings
    return sign_url(await signing_secret(request), url, lifetime=settings.signed_url_seconds)


def _allowed_origin(request: Request, settings: Settings, origin: str) -> bool:
    """The API's own origin (PUBLIC_BASE_URL's, or the Host the request came to unless
    PUBLIC_BASE_URL names another and no TRUSTED_HOSTS vouch for it) or one in CORS_ORIGINS."""
    origin = origin.rstrip("/")
    if origin in settings.cors_origin_list:
        return True
    if settings.public_base_url:
        parts = urlsplit(settings.public_base_url)
        if origin == f"{parts.scheme}://{parts.netloc}":
            return True
    if settings.public_base_url and not settings.trusted_host_list:
        return False
    # Scheme aside: behind a TLS proxy without forwarded headers the app sees http.
    return urlsplit(origin).netloc == request.headers.get("host", "")


def _check_origin(request: Request, settings: Settings) -> None:
    """While the API is open: a state-changing request sent by a page of a foreign origin
    (browsers always send Origin on those) is refused."""
    origin = request.headers.get("origin")
    if request.method in _SAFE_METHODS or origin is None:
        return
    if not _allowed_origin(request, settings, origin):
        raise InvalidRequest(
            f"requests from pages at {origin[:100]} are not allowed; add the origin to "
            "CORS_ORIGINS, or create an API key",
            status_code=403,
        )


async def auth_enabled(settings: Settings, backends: Backends) -> bool:
    if settings.auth == "off":
        return False
    return settings.auth == "on" or await backends.store.has_active_keys()


async def _resolve(request: Request, settings: Settings, backends: Backends) -> Principal:
    if settings.auth == "off":
        return OPEN
    route: BaseRoute | None = request.scope.get("route")
    query = request.query_params
    if (
        "signature" in query
        and request.method in ("GET", "HEAD")
        and getattr(route, "path", None) in SIGNABLE_ROUTES
    ):
        if verify_signature(
            await signing_secret(request),
            "GET",
            _app_path(request),
            query.get("expires", ""),
            query["signature"],
        ):
            return Principal(key_id=None, name="signed-url", admin=True, max_priority=0)
        if _credential(request) is None:
            raise AuthRequired("this link has expired or its signature is wrong; get new links")
    credential = _credential(request)
    if credential is not None:
        key_id = parse_key(credential)
        record = await backends.store.get_key(key_id or _UNKNOWN_ID)
        if key_matches(credential, record if key_id else None):
            assert record is not None
            return Principal.of(record)
    if settings.auth == "auto" and not await backends.store.has_active_keys():
        return OPEN
    if settings.auth == "on" and not await backends.store.has_active_keys():
        raise AuthRequired(
            "AUTH=on and no API key exists yet: create one on the server with "
            "`smap-stt keys create NAME`"
        )
    raise AuthRequired(
        "a valid API key is required: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
    )


async def authenticate(request: Request) -> Principal:
    """The principal of this request (cached by FastAPI for the request, so resolved once)."""
    if is_public(request.scope.get("route")):
        return OPEN
    settings: Settings = request.app.state.settings
    backends: Backends = request.app.state.backends
    principal = await _resolve(request, settings, backends)
    if principal is OPEN:
        _check_origin(request, settings)
    await limits.check_request_rate(settings, backends.store, principal)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]
AUTHENTICATE = Depends(authenticate)


async def warn_while_open(settings: Settings, backends: Backends, *, every: float = 3600) -> None:
    """Log a warning at startup and every hour while anyone can use the API without a key."""
    while True:
        try:
            if settings.auth == "off":
                log.warning("AUTH=off: the API is open to anyone who can reach it")
            elif not await backends.store.has_active_keys():
                if settings.auth == "on":
                    log.error(
                        "AUTH=on and no API key exists: every request is refused; create one "
                        "with `smap-stt keys create NAME`"
                    )
                else:
                    log.warning(
                        "no API key exists: the API is open to anyone who can reach it; "
                        "`smap-stt keys create NAME` locks it"
                    )
        except Exception as exc:  # a database hiccup must not end the reminder
            log.warning("could not check for API keys: %s", exc)
        await asyncio.sleep(every)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The schema with the two ways to send a key, required on every operation but the
    public ones."""

    def schema() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = document.setdefault("components", {})
        components["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "An API key"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                operation.setdefault("security", [{"bearer": []}, {"apiKey": []}])
        app.openapi_schema = document
        return document

    return schema


def install(app: FastAPI, settings: Settings) -> None:
    """CORS, trusted hosts and the schema's security. The dependency itself is given to
    `FastAPI(dependencies=[AUTHENTICATE])`, so that every router included later has it."""
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    if settings.cors_origin_list:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "Idempotency-Key"],
            expose_headers=["Retry-After", "Content-Disposition"],
            max_age=600,
        )
    if settings.trusted_host_list:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.trusted_host_list)
