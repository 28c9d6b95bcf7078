"""The webhook address rules (SSRF), URL checks and signature, without any network."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import pytest

from smap_stt import webhooks
from smap_stt.errors import InvalidRequest
from smap_stt.webhooks import address_refusal, parse_callback_url, public_url, sign


def refusal(text: str, *, allow_private: bool = False) -> str | None:
    return address_refusal(ipaddress.ip_address(text), allow_private=allow_private)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "private"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("169.254.169.254", "metadata"),
        ("fd00:ec2::254", "metadata"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "metadata"),
        ("240.0.0.1", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = refusal(address)
    assert reason is not None
    assert why in reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(address) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.5", "192.168.0.2", "fe80::1", "::1"])
def test_allow_private_opens_internal_targets(address: str) -> None:
    assert refusal(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "224.0.0.1", "0.0.0.0"])
def test_allow_private_never_opens_metadata_multicast_unspecified(address: str) -> None:
    assert refusal(address, allow_private=True) is not None


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "gopher://example.com",
        "example.com/hook",
        "http://",
        "http://user:secret@example.com/hook",
        "http://example.com:99999/hook",
        "http://example.com:0/hook",
        "https://example.com/" + "a" * 3000,
    ],
)
def test_bad_urls_are_refused_with_422(url: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_callback_url(url)
    assert caught.value.status_code == 422


def test_good_url_parses() -> None:
    parts = parse_callback_url("https://hooks.example.com:8443/smap?token=abc")
    assert (parts.hostname, parts.port, parts.path) == ("hooks.example.com", 8443, "/smap")


async def test_ip_literal_checked_at_upload_without_dns() -> None:
    with pytest.raises(InvalidRequest, match="loopback"):
        await webhooks.check_callback_url("http://127.0.0.1:9/x", allow_private=False)
    with pytest.raises(InvalidRequest, match="metadata"):
        await webhooks.check_callback_url("http://169.254.169.254/latest", allow_private=True)
    with pytest.raises(InvalidRequest, match="metadata"):
        await webhooks.check_callback_url("http://[fd00:ec2::254]/", allow_private=True)
    assert await webhooks.check_callback_url("http://127.0.0.1:9/x", allow_private=True)


def test_public_url_drops_query_and_fragment() -> None:
    assert public_url("https://h.example/p/q?token=s3cret#frag") == "https://h.example/p/q"


def test_signature_is_hmac_of_timestamp_dot_body() -> None:
    body = b'{"event":"job.completed"}'
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", body) == f"sha256={expected}"
    assert sign("k", "1700000001", body) != sign("k", "1700000000", body)


async def test_upload_callback_needs_the_secret_and_a_public_target() -> None:
    from smap_stt.config import Settings
    from smap_stt.service import callback_from

    bare = Settings(_env_file=None)
    assert await callback_from(bare, {}) is None
    with pytest.raises(InvalidRequest, match="WEBHOOK_SECRET"):
        await callback_from(bare, {"callback_url": "https://93.184.216.34/hook"})
    signed = Settings(_env_file=None, webhook_secret="k")
    assert await callback_from(signed, {"callback_url": "https://93.184.216.34/h?t=1"}) == (
        "https://93.184.216.34/h?t=1"
    )
    with pytest.raises(InvalidRequest, match="loopback"):
        await callback_from(signed, {"callback_url": "http://[::1]:8080/hook"})


async def test_send_connects_to_the_checked_address_with_the_name_in_host_and_sni() -> None:
    """The request goes to the resolved IP (no second lookup for rebinding to exploit); the
    name travels in the Host header and the TLS SNI extension."""
    import httpx

    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        request = webhooks.Request("http://localhost:8080/hook?t=1", b"{}", {"X-SMAP-Event": "e"})
        assert await webhooks.post(client, request, seconds=5, allow_private=True) == 204
        with pytest.raises(webhooks.AddressRefused, match="loopback"):
            await webhooks.post(client, request, seconds=5, allow_private=False)
        secure = webhooks.Request("https://93.184.216.34/p?q=1", b"{}", {})
        assert await webhooks.post(client, secure, seconds=5, allow_private=False) == 204
    first, second = seen
    assert first.url.host in ("127.0.0.1", "::1") and first.url.port == 8080
    assert first.url.path == "/hook" and first.url.query == b"t=1"
    assert first.headers["host"] == "localhost:8080"
    assert second.url.host == "93.184.216.34" and second.extensions["sni_hostname"] == (
        "93.184.216.34"
    )
    assert len(seen) == 2  # the refused one never left
