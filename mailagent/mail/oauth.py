"""OAuth2 for XOAUTH2 logins: the refresh-token grant, and the two flows that get a refresh token.

In: `OAuthSettings` (token endpoint, client id, the refresh token from the keyring). Out: an
access token, renewed `refresh_margin_seconds` before it expires and kept for this process only;
a refresh token the provider rotates is written back to the keyring entry it came from. The
device flow (RFC 8628, Microsoft) and the loopback redirect flow with PKCE (RFC 8252, Google)
run once, from `mailagent init --oauth`. The only importer of httpx in mailagent, and only
when a token is fetched (httpx brings its command line's libraries with it).
It must never log or print a token, and a refused refresh token is a permanent error that tells
the owner to run `mailagent init --oauth` again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mailagent import keystore
from mailagent.config import OAuthSettings
from mailagent.errors import OAuthError, OAuthRevokedError

log = logging.getLogger(__name__)

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass
class Grant:
    access_token: str
    expires_at: float  # time.time() seconds
    refresh_token: str | None


_lock = threading.Lock()
_grants: dict[tuple[str, str, str], Grant] = {}


def _key(settings: OAuthSettings) -> tuple[str, str, str]:
    origin = settings.refresh_token_ref or hashlib.sha256(
        settings.refresh_token.encode()).hexdigest()
    return settings.token_url, settings.client_id, origin


def access_token(settings: OAuthSettings, username: str) -> str:
    """A valid access token for `username`, refreshed first if it is close to expiry."""
    with _lock:
        grant = _grants.get(_key(settings))
        if grant is None or grant.expires_at - time.time() <= settings.refresh_margin_seconds:
            grant = _refresh(settings, username, grant)
            _grants[_key(settings)] = grant
        return grant.access_token


def _refresh(settings: OAuthSettings, username: str, old: Grant | None) -> Grant:
    refresh_token = (old.refresh_token if old else None) or settings.refresh_token
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": settings.client_id}
    if settings.client_secret:
        form["client_secret"] = settings.client_secret
    if settings.scope:
        form["scope"] = settings.scope
    try:
        body = post_form(settings.token_url, form, settings.timeout_seconds)
    except OAuthRevokedError as exc:
        raise OAuthRevokedError(
            f"the OAuth refresh token for {username} was refused by {settings.token_url} "
            f"({exc}): it was revoked or has expired; run `mailagent init --oauth` again to "
            "sign in anew") from None
    grant = parse_grant(body, settings.token_url)
    if grant.refresh_token and grant.refresh_token != refresh_token:
        if settings.refresh_token_ref:
            keystore.replace_secret(settings.refresh_token_ref, grant.refresh_token)
        log.info("OAuth refresh token for %s was rotated by the provider", username)
    grant.refresh_token = grant.refresh_token or refresh_token
    log.info("OAuth access token for %s refreshed, valid %.0f s", username,
             grant.expires_at - time.time())
    return grant


def parse_grant(body: dict[str, Any], token_url: str) -> Grant:
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise OAuthError(f"{token_url} answered without an access_token")
    expires_in = body.get("expires_in", 3600)
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        lifetime = 3600.0
    refresh = body.get("refresh_token")
    return Grant(token, time.time() + lifetime, refresh if isinstance(refresh, str) else None)


def post_form(url: str, form: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST a form to a token endpoint; an OAuth error answer raises with its code.

    `invalid_grant` and `invalid_client` (RFC 6749 5.2) mean new consent is needed:
    they raise OAuthRevokedError. Other answers raise OAuthError, which callers retry.
    """
    import httpx

    try:
        response = httpx.post(url, data=form, timeout=timeout,
                              headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise OAuthError(f"cannot reach the OAuth token endpoint {url}: {exc}") from exc
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    if response.status_code == 200:
        return body
    error = str(body.get("error") or f"HTTP {response.status_code}")
    detail = str(body.get("error_description") or "").splitlines()[:1]
    text = f"{error}: {detail[0]}" if detail else error
    if error in ("invalid_grant", "invalid_client", "unauthorized_client"):
        raise OAuthRevokedError(text)
    raise OAuthError(text)


def forget_tokens() -> None:
    """Drop every cached access token (the next login refreshes)."""
    with _lock:
        _grants.clear()


# ---------------------------------------------------------------- getting a refresh token


@dataclass(frozen=True)
class FlowSettings:
    client_id: str
    token_url: str
    scope: str
    client_secret: str | None = None
    device_url: str = ""
    auth_url: str = ""
    timeout_seconds: float = 300.0  # how long the owner has to consent


def device_flow(flow: FlowSettings, say: Callable[[str], None],
                sleep: Callable[[float], None] = time.sleep) -> Grant:
    """RFC 8628: show a code for the owner to enter on the provider's page, poll for consent."""
    form = {"client_id": flow.client_id, "scope": flow.scope}
    started = post_form(flow.device_url, form, 30.0)
    page = started.get("verification_uri") or started.get("verification_url")
    say(str(started.get("message") or
            f"Open {page} and enter the code {started.get('user_code')}"))
    interval = float(started.get("interval", 5))
    deadline = time.monotonic() + min(float(started.get("expires_in", 900)),
                                      flow.timeout_seconds)
    poll = {"grant_type": DEVICE_GRANT, "device_code": str(started.get("device_code")),
            "client_id": flow.client_id}
    if flow.client_secret:
        poll["client_secret"] = flow.client_secret
    while time.monotonic() < deadline:
        sleep(interval)
        try:
            return parse_grant(post_form(flow.token_url, poll, 30.0), flow.token_url)
        except OAuthError as exc:
            code = str(exc).partition(":")[0]
            if code == "slow_down":
                interval += 5
            elif code != "authorization_pending":
                raise OAuthError(f"sign-in did not complete: {exc}") from None
    raise OAuthError("sign-in timed out: run `mailagent init --oauth` again")


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) for RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).decode().rstrip("=")
