"""The loopback redirect flow (RFC 8252 with PKCE): how Google grants a desktop app mail access.

In: `FlowSettings` with the provider's authorization page. Out: a `Grant` with a refresh token.
Side effects: a one-shot HTTP listener on 127.0.0.1 (a free port) that takes the browser's
redirect, and the system browser opened on the consent page (the page is printed too, for a
machine without one). It must never listen beyond loopback, and accepts only the redirect that
carries the `state` it sent.
"""

from __future__ import annotations

import secrets
import threading
import webbrowser
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

from mailagent.errors import OAuthError
from mailagent.mail.oauth import FlowSettings, Grant, parse_grant, pkce_pair, post_form

DONE_PAGE = b"<html><body>mailagent is signed in. You may close this tab.</body></html>"


class _Redirect(BaseHTTPRequestHandler):
    """Takes the one redirect; the query is kept on the server for the waiting flow."""

    server: _Listener

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        if query.get("state", [""])[0] != self.server.state:
            self.send_error(400, "unexpected state")
            return
        self.server.query = {k: v[0] for k, v in query.items()}
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(DONE_PAGE)
        self.server.arrived.set()

    def log_message(self, format: str, *args: object) -> None:
        """The query holds the authorization code: nothing of it is logged."""


class _Listener(HTTPServer):
    def __init__(self, state: str) -> None:
        super().__init__(("127.0.0.1", 0), _Redirect)
        self.state = state
        self.query: dict[str, str] = {}
        self.arrived = threading.Event()


def loopback_flow(flow: FlowSettings, say: Callable[[str], None],
                  open_browser: bool = True) -> Grant:
    """Open the consent page, wait for the redirect to loopback, trade the code for tokens."""
    verifier, challenge = pkce_pair()
    listener = _Listener(secrets.token_urlsafe(24))
    redirect_uri = f"http://127.0.0.1:{listener.server_address[1]}/"
    page = flow.auth_url + "?" + urlencode({
        "response_type": "code", "client_id": flow.client_id, "redirect_uri": redirect_uri,
        "scope": flow.scope, "state": listener.state, "code_challenge": challenge,
        "code_challenge_method": "S256", "access_type": "offline", "prompt": "consent"})
    thread = threading.Thread(target=listener.serve_forever, daemon=True)
    thread.start()
    try:
        say(f"Open this page to let mailagent use your mailbox:\n  {page}")
        if open_browser:
            webbrowser.open(page)
        if not listener.arrived.wait(flow.timeout_seconds):
            raise OAuthError("sign-in timed out: run `mailagent init --oauth` again")
    finally:
        listener.shutdown()
        listener.server_close()
    if "code" not in listener.query:
        raise OAuthError(f"sign-in was refused: {listener.query.get('error', 'no code')}")
    form = {"grant_type": "authorization_code", "code": listener.query["code"],
            "redirect_uri": redirect_uri, "client_id": flow.client_id,
            "code_verifier": verifier}
    if flow.client_secret:
        form["client_secret"] = flow.client_secret
    return parse_grant(post_form(flow.token_url, form, 30.0), flow.token_url)
