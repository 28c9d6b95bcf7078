"""Webhooks: tell another system when a job is final, without it polling.

The contract (docs/OPERATIONS.md): a POST of a JSON body `{event, job_id, status, ...}` with
`X-SMAP-Event`, `X-SMAP-Delivery` (the same id on every retry of one delivery, for the receiver
to dedupe on), `X-SMAP-Timestamp` and `X-SMAP-Signature: sha256=<hex HMAC-SHA256 of
"<timestamp>.<body>" keyed with WEBHOOK_SECRET>`. A 2xx within WEBHOOK_TIMEOUT_SECONDS is
delivered; anything else is tried again after WEBHOOK_RETRY_DELAYS; a 410 stops it.

Delivery is an outbox, like publishing: the job store update that makes a job final also makes
its webhook due (`Job.webhook_next_at`), and a recovery sweep sends what is due, so a crash
between the two loses nothing (at least once; a receiver may see a delivery twice). Every
attempt is recorded on the job. Sending runs in the sweep, never in a job's task: a slow or
hanging receiver costs at most WEBHOOK_TIMEOUT_SECONDS of a sweep, never transcription time.

Callbacks cannot be turned against the network they run in (SSRF): only http(s); the host's
addresses are checked at upload and again at send time after resolving it, and the request goes
to the checked address (the URL's host travels in the Host header and TLS SNI), so a DNS answer
that changes in between (rebinding) cannot redirect it; redirects are not followed. Loopback,
private and link-local targets need WEBHOOK_ALLOW_PRIVATE=true; cloud metadata, multicast and
unspecified addresses are never allowed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from smap_stt import metrics
from smap_stt.errors import BackendUnavailable, InvalidRequest, JobNotFound
from smap_stt.jobs import Job, utcnow

if TYPE_CHECKING:
    import httpx

    from smap_stt.backends import Backends
    from smap_stt.config import Settings
    from smap_stt.store.base import JobStore

log = logging.getLogger(__name__)

__all__ = [
    "address_refusal",
    "check_callback_url",
    "parse_callback_url",
    "public_url",
    "send_due",
    "sign",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
RESOLVE_TIMEOUT = 5.0
BATCH = 50
CLAIM_MARGIN = 60.0
"""Seconds past the timeout a delivery being sent is hidden from other sweeps."""
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(text) for text in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# Beyond what `is_private` and friends cover: the carrier-grade NAT range is not public either.
_NOT_PUBLIC = (ipaddress.ip_network("100.64.0.0/10"),)


class AddressRefused(Exception):
    """The callback's host is, or resolves to, an address webhooks may not reach."""


# --- address rules (pure) -------------------------------------------------------------------


def address_refusal(address: IPAddress, *, allow_private: bool) -> str | None:
    """Why a webhook may not go to `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_refusal(address.ipv4_mapped, allow_private=allow_private)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private or any(address in network for network in _NOT_PUBLIC):
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "not a public address"
    return None


def parse_callback_url(url: str) -> SplitResult:
    """The URL's parts, or InvalidRequest (422) saying what is wrong with it."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"callback_url is longer than {MAX_URL_LENGTH} characters")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise InvalidRequest("callback_url must be an http:// or https:// URL")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise InvalidRequest("callback_url has an invalid port") from None
    if not host:
        raise InvalidRequest("callback_url has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("callback_url must not carry a user name or password")
    if port == 0:
        raise InvalidRequest("callback_url has an invalid port")
    return parts


def public_url(url: str) -> str:
    """The URL without its query string and fragment (tokens often live there), for display."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def resolve(host: str, port: int, *, allow_private: bool) -> IPAddress:
    """The address to connect to: every address the host resolves to must be allowed (one bad
    answer among good ones refuses it), and the first is used."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from None
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses:
            raise OSError(f"cannot resolve {host}")
    for address in addresses:
        why = address_refusal(address, allow_private=allow_private)
        if why is not None:
            raise AddressRefused(f"{host} is {why} ({address})")
    return addresses[0]


async def check_callback_url(url: str, *, allow_private: bool) -> str:
    """At upload: the cleaned URL, or InvalidRequest (422) when it is not one webhooks may
    reach. Checked again at each send (the DNS answer may change)."""
    parts = parse_callback_url(url)
    assert parts.hostname is not None
    try:
        await resolve(parts.hostname, _port(parts), allow_private=allow_private)
    except AddressRefused as exc:
        hint = "" if allow_private else " (WEBHOOK_ALLOW_PRIVATE=true allows internal targets)"
        raise InvalidRequest(f"callback_url is not allowed: {exc}{hint}") from None
    except OSError:
        raise InvalidRequest(
            f"callback_url: the host {parts.hostname!r} does not resolve"
        ) from None
    return urlunsplit(parts)


def _port(parts: SplitResult) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


# --- the message ----------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """`sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, the X-SMAP-Signature value."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def event_name(job: Job) -> str:
    return f"job.{job.status.value.lower()}"


def payload(job: Job, base_url: str) -> dict[str, Any]:
    result_path = f"/api/v1/tasks/{job.id}/result"
    return {
        "event": event_name(job),
        "job_id": job.id,
        "status": job.status.value,
        "filename": job.filename,
        "language": job.detected_language or job.language,
        "model": job.model,
        "duration_seconds": job.duration_seconds,
        "processing_time_seconds": job.processing_time_seconds,
        "error_message": job.error_message,
        "result_url": f"{base_url.rstrip('/')}{result_path}" if base_url else result_path,
        "created_at": job.created_at.isoformat(),
        "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        "retry_of": job.retry_of,
    }


@dataclass(frozen=True)
class Request:
    url: str
    body: bytes
    headers: dict[str, str]


def build_request(job: Job, settings: Settings, delivery_id: str) -> Request:
    assert job.callback_url is not None
    body = json.dumps(payload(job, settings.public_base_url), separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "smap-stt-webhooks",
        "X-SMAP-Event": event_name(job),
        "X-SMAP-Delivery": delivery_id,
        "X-SMAP-Timestamp": timestamp,
        "X-SMAP-Signature": sign(settings.webhook_secret, timestamp, body),
    }
    return Request(job.callback_url, body, headers)


# --- sending --------------------------------------------------------------------------------


async def post(
    client: httpx.AsyncClient, request: Request, *, seconds: float, allow_private: bool
) -> int:
    """POST to the checked, resolved address (never re-resolved by the HTTP client) and return
    the status code; raises AddressRefused, OSError or httpx errors, TimeoutError."""
    parts = parse_callback_url(request.url)
    assert parts.hostname is not None
    port = _port(parts)
    address = await resolve(parts.hostname, port, allow_private=allow_private)
    host = f"[{address}]" if address.version == 6 else str(address)
    target = urlunsplit((parts.scheme, f"{host}:{port}", parts.path or "/", parts.query, ""))
    headers = dict(request.headers)
    headers["Host"] = parts.netloc
    extensions = {"sni_hostname": parts.hostname} if parts.scheme == "https" else {}
    async with asyncio.timeout(seconds):  # the whole exchange, not each read
        async with client.stream(
            "POST",
            target,
            content=request.body,
            headers=headers,
            extensions=extensions,
            follow_redirects=False,
        ) as response:
            return response.status_code  # the body is not read: a receiver cannot flood us


async def attempt(settings: Settings, store: JobStore, client: httpx.AsyncClient, job: Job) -> str:
    """One attempt at the job's current delivery, recorded on the job; returns its outcome:
    delivered, retry, gave_up, gone or refused."""
    delivery_id = job.webhook_delivery_id or str(uuid.uuid4())
    request = build_request(job, settings, delivery_id)
    started = time.monotonic()
    record: dict[str, Any] = {"at": utcnow().isoformat(), "delivery_id": delivery_id}
    status_code: int | None = None
    refused = False
    try:
        status_code = await post(
            client,
            request,
            seconds=settings.webhook_timeout_seconds,
            allow_private=settings.webhook_allow_private,
        )
        record["status_code"] = status_code
    except AddressRefused as exc:
        refused = True
        record["error"] = f"address not allowed: {exc}"
    except TimeoutError:
        record["error"] = f"no answer within {settings.webhook_timeout_seconds:g} s"
    except InvalidRequest as exc:
        refused = True
        record["error"] = str(exc)
    except Exception as exc:  # connection refused, reset, TLS, DNS: worth another try
        record["error"] = _describe(exc)
    elapsed = time.monotonic() - started
    record["duration_ms"] = round(elapsed * 1000)
    metrics.WEBHOOK_SECONDS.observe(elapsed)

    tries = 1 + sum(1 for old in job.webhook_attempts if old.get("delivery_id") == delivery_id)
    now = utcnow()
    changes: dict[str, Any] = {
        "webhook_attempts": [*job.webhook_attempts, record],
        "webhook_delivery_id": delivery_id,
        "webhook_next_at": None,
    }
    delays = settings.webhook_retry_delays
    if status_code is not None and 200 <= status_code < 300:
        outcome = "delivered"
        changes["webhook_delivered_at"] = now
    elif status_code == 410:
        outcome = "gone"
    elif refused:
        outcome = "refused"
    elif tries <= len(delays):
        outcome = "retry"
        changes["webhook_next_at"] = now + timedelta(seconds=delays[tries - 1])
    else:
        outcome = "gave_up"
    await store.update_final(job.id, changes)
    metrics.WEBHOOK_DELIVERIES.labels(outcome=outcome).inc()
    answer = f"HTTP {status_code}" if status_code is not None else record["error"]
    log.log(
        logging.INFO if outcome == "delivered" else logging.WARNING,
        "job %s: webhook attempt %d (delivery %s): %s → %s",
        job.id,
        tries,
        delivery_id,
        answer,
        outcome,
    )
    return outcome


def make_client() -> httpx.AsyncClient:
    import httpx

    # No environment proxies: a proxy would connect by name and undo the address pinning.
    return httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None)


async def send_due(settings: Settings, backends: Backends) -> None:
    """The webhook sweep: send every due delivery, WEBHOOK_CONCURRENCY at once. Each is claimed
    first (its next attempt moved past the timeout) so an overlapping sweep skips it."""
    store = backends.store
    due = await store.webhooks_due(limit=BATCH)
    if not due:
        return
    hold = timedelta(seconds=settings.webhook_timeout_seconds + RESOLVE_TIMEOUT + CLAIM_MARGIN)
    slots = asyncio.Semaphore(settings.webhook_concurrency)

    async def one(job: Job) -> None:
        async with slots:
            try:
                claimed = await store.update_final(job.id, {"webhook_next_at": utcnow() + hold})
                if claimed is not None:
                    await attempt(settings, store, client, claimed)
            except BackendUnavailable as exc:
                log.info("job %s: webhook not sent now (%s)", job.id, exc)
            except Exception:
                log.exception("job %s: webhook attempt failed unexpectedly", job.id)

    async with make_client() as client:
        await asyncio.gather(*(one(job) for job in due))


async def redeliver(settings: Settings, store: JobStore, job_id: str) -> str:
    """`smap-stt webhooks redeliver`: a new delivery (new id) of a final job's webhook, sent
    now; if it fails, the sweeps retry it as usual."""
    job = await store.get(job_id)
    if job.callback_url is None:
        raise InvalidRequest(f"job {job_id} has no callback_url")
    if not job.status.final:
        raise InvalidRequest(f"job {job_id} is {job.status.value}; its webhook is sent when final")
    updated = await store.update_final(
        job_id, {"webhook_delivery_id": str(uuid.uuid4()), "webhook_delivered_at": None}
    )
    if updated is None:
        raise JobNotFound(f"no final job with id {job_id!r}")
    async with make_client() as client:
        return await attempt(settings, store, client, updated)


def status_view(job: Job) -> dict[str, Any] | None:
    """The `webhook` block of a job's status (None without a callback)."""
    if job.callback_url is None:
        return None
    return {
        "url": public_url(job.callback_url),
        "attempts": [
            {key: value for key, value in record.items() if key != "delivery_id"}
            for record in job.webhook_attempts
        ],
        "delivered_at": job.webhook_delivered_at,
        "next_attempt_at": job.webhook_next_at if job.status.final else None,
    }


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]
