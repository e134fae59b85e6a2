"""OAuth2 for tests: a loopback authorization server, Dovecot and aiosmtpd accepting XOAUTH2.

``OAuthServer.start()`` speaks the OAuth2 token protocol on 127.0.0.1 (a free port):

* ``POST /token``: grants ``refresh_token`` (RFC 6749 6), ``authorization_code`` with PKCE
  (RFC 7636) and ``urn:ietf:params:oauth:grant-type:device_code`` (RFC 8628). A refused
  grant is ``400 {"error": "invalid_grant"}``, as Google and Microsoft answer.
* ``POST /devicecode``: starts a device flow; the first poll is ``authorization_pending``.
* ``GET /authorize``: consents at once and redirects to ``redirect_uri`` with a code.
* ``POST /introspect``: RFC 7662 introspection, which Dovecot's oauth2 passdb calls to check
  the access token a client presents with AUTHENTICATE XOAUTH2.

Access tokens are ``access-1``, ``access-2``... in issue order; ``expires_in`` is settable.
``OAuthDovecot`` is the test Dovecot with an oauth2 passdb pointed at ``/introspect``;
``OAuthSmtpServer`` is an aiosmtpd server whose handler implements ``auth_XOAUTH2`` against the
same server. Both record which access token each successful login used.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tests.support.dovecot import Dovecot
from tests.support.smtp import SmtpServer

CLIENT_ID = "test-client"


@dataclass
class OAuthState:
    expires_in: int = 3600
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    access_tokens: dict[str, tuple[str, float]] = field(default_factory=dict)
    codes: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # code -> user...
    device_codes: dict[str, int] = field(default_factory=dict)  # device code -> polls
    grants: list[str] = field(default_factory=list)  # grant_type of every token request
    introspected: list[str] = field(default_factory=list)
    issued: int = 0
    user: str = "agent@example.com"
    rotate: bool = False  # hand out a new refresh token with each refresh


class _Handler(BaseHTTPRequestHandler):
    server: _HttpServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _form(self) -> dict[str, str]:
        length = int(self.headers.get("Content-Length", 0))
        return {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path != "/authorize":
            self._json(404, {"error": "not_found"})
            return
        code = secrets.token_urlsafe(8)
        with self.server.lock:
            self.server.state.codes[code] = (self.server.state.user, query["code_challenge"],
                                             query["redirect_uri"])
        self.send_response(302)
        self.send_header("Location", query["redirect_uri"] + "?" + urlencode(
            {"code": code, "state": query["state"]}))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        form = self._form()
        with self.server.lock:
            path = urlparse(self.path).path
            if path == "/token":
                status, body = self.server.token(form)
            elif path == "/devicecode":
                status, body = self.server.device(form)
            elif path == "/introspect":
                status, body = self.server.introspect(form)
            else:
                status, body = 404, {"error": "not_found"}
        self._json(status, body)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = OAuthState()
        self.lock = threading.Lock()

    def _issue(self, user: str, refresh: str | None) -> dict[str, Any]:
        s = self.state
        s.issued += 1
        access = f"access-{s.issued}"
        s.access_tokens[access] = (user, time.time() + s.expires_in)
        body: dict[str, Any] = {"access_token": access, "token_type": "Bearer",
                                "expires_in": s.expires_in}
        if refresh is not None:
            s.refresh_tokens[refresh] = user
            body["refresh_token"] = refresh
        return body

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        s = self.state
        grant = form.get("grant_type", "")
        s.grants.append(grant)
        refused = (400, {"error": "invalid_grant",
                         "error_description": "Token has been expired or revoked."})
        if form.get("client_id") != CLIENT_ID:
            return 401, {"error": "invalid_client"}
        if grant == "refresh_token":
            user = s.refresh_tokens.get(form.get("refresh_token", ""))
            if user is None:
                return refused
            new = None
            if s.rotate:
                s.refresh_tokens.pop(form["refresh_token"])
                new = f"refresh-{secrets.token_hex(4)}"
            return 200, self._issue(user, new)
        if grant == "authorization_code":
            entry = s.codes.pop(form.get("code", ""), None)
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).decode().rstrip("=")
            if entry is None or entry[1] != challenge or entry[2] != form.get("redirect_uri"):
                return refused
            return 200, self._issue(entry[0], f"refresh-{secrets.token_hex(4)}")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            code = form.get("device_code", "")
            if code not in s.device_codes:
                return refused
            s.device_codes[code] += 1
            if s.device_codes[code] == 1:
                return 400, {"error": "authorization_pending"}
            del s.device_codes[code]
            return 200, self._issue(s.user, f"refresh-{secrets.token_hex(4)}")
        return 400, {"error": "unsupported_grant_type"}

    def device(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        code = secrets.token_urlsafe(8)
        self.state.device_codes[code] = 0
        port = self.server_address[1]
        return 200, {"device_code": code, "user_code": "WDJB-MJHT", "interval": 1,
                     "verification_uri": f"http://127.0.0.1:{port}/device", "expires_in": 60}

    def introspect(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        token = form.get("token", "")
        self.state.introspected.append(token)
        entry = self.state.access_tokens.get(token)
        if entry is None or entry[1] < time.time():
            return 200, {"active": "false"}
        return 200, {"active": "true", "email": entry[0]}


class OAuthServer:
    """A running loopback authorization server; see the module docstring."""

    def __init__(self) -> None:
        self._http = _HttpServer()
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @classmethod
    def start(cls) -> OAuthServer:
        server = cls()
        server._thread.start()
        return server

    @property
    def state(self) -> OAuthState:
        return self._http.state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._http.server_address[1]}"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/token"

    def add_refresh_token(self, token: str, user: str = "agent@example.com") -> None:
        with self._http.lock:
            self.state.refresh_tokens[token] = user

    def revoke(self, token: str) -> None:
        with self._http.lock:
            self.state.refresh_tokens.pop(token, None)

    def is_valid_access(self, token: str, user: str) -> bool:
        with self._http.lock:
            entry = self.state.access_tokens.get(token)
        return entry is not None and entry[0] == user and entry[1] >= time.time()

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()


class OAuthDovecot(Dovecot):
    """The test Dovecot, also accepting AUTHENTICATE XOAUTH2 checked by introspection."""

    introspection_url = ""

    def _write_config(self) -> None:
        super()._write_config()
        conf = self.directory / "dovecot-oauth2.conf.ext"
        conf.write_text(f"introspection_mode = post\nintrospection_url = "
                        f"{self.introspection_url}\nforce_introspection = yes\n"
                        "username_attribute = email\nactive_attribute = active\n"
                        "active_value = true\n")
        conf.chmod(0o644)
        text = self.config_path.read_text()
        text = text.replace("auth_mechanisms = plain login",
                            "auth_mechanisms = plain login xoauth2 oauthbearer")
        text = text.replace("passdb {\n  driver = passwd-file", (
            f"passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n"
            f"  args = {conf}\n}}\npassdb {{\n  driver = passwd-file\n"
            "  mechanisms = plain login"), 1)
        self.config_path.write_text(text)

    @classmethod
    def start_with(cls, oauth: OAuthServer) -> OAuthDovecot:
        cls.introspection_url = f"{oauth.base_url}/introspect"
        instance = cls.start()
        assert isinstance(instance, OAuthDovecot)
        return instance


class _XOAuth2Handler:
    """Records mail, and checks AUTH XOAUTH2 tokens against the OAuth server."""

    def __init__(self, oauth: OAuthServer, user: str) -> None:
        self.oauth, self.user = oauth, user
        self.tokens: list[str] = []
        self.messages: list[bytes] = []

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        blob = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
        fields = dict(p.split("=", 1) for p in blob.split("\x01") if "=" in p)
        token = fields.get("auth", "").removeprefix("Bearer ")
        if fields.get("user") == self.user and self.oauth.is_valid_access(token, self.user):
            self.tokens.append(token)
            return AuthResult(success=True, auth_data=self.user)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(bytes(envelope.original_content or b""))
        return "250 2.0.0 OK queued"


class OAuthSmtpServer(SmtpServer):
    """aiosmtpd requiring AUTH, offering XOAUTH2 (and PLAIN/LOGIN, which always fail)."""

    def __init__(self, oauth: OAuthServer, user: str = "agent@example.com") -> None:
        super().__init__(username=user, password=secrets.token_hex(16))
        self.xoauth2 = _XOAuth2Handler(oauth, user)
        self._controller.handler = self.xoauth2

    @classmethod
    def start_with(cls, oauth: OAuthServer) -> OAuthSmtpServer:
        server = cls(oauth)
        server._controller.start()
        server._running = True
        return server
