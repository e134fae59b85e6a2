"""An upstream HTTP proxy on loopback that stands for the internet: it maps host names to local
servers, so a test can give names such as `allowed.test` and `other.test` without DNS.

srt (Anthropic's sandbox-runtime) sends what its filter lets through to the proxy configured as
`[commands] upstream_proxy`; this one records every host it is asked for, so a test sees what
left the filter and what did not. It speaks both forms a proxy is asked in: an absolute URL
(`GET http://allowed.test/ HTTP/1.1`) and `CONNECT host:port`.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import select
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

# srt as scripts/test.sh installs it (with a Node 22 for it) into .venv/srt; MAILAGENT_SRT
# names another.
SRT = Path(os.environ.get("MAILAGENT_SRT") or Path(__file__).resolve().parents[2] / ".venv"
           / "srt" / "node_modules" / ".bin" / "srt")
PYTHON = str(Path(sys.prefix) / "bin" / "python3")
# A command that fetches each URL it is given and prints what came back, or why nothing did.
FETCH = """
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        print(url, urllib.request.urlopen(url, timeout=10).read().decode().strip())
    except Exception as error:
        print(url, "FAILED", error)
"""


class Site(http.server.ThreadingHTTPServer):
    """A loopback web server that answers every GET with its name and counts the requests."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), _SiteHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _SiteHandler(http.server.BaseHTTPRequestHandler):
    server: Site

    def do_GET(self) -> None:  # http.server names handlers after the verb
        self.server.requests.append(self.path)
        body = f"hello from {self.server.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Upstream(http.server.ThreadingHTTPServer):
    """The proxy: `sites` by host name; an unknown name gets 502, as an unknown host would."""

    def __init__(self, sites: dict[str, Site]) -> None:
        self.sites = sites
        self.asked: list[str] = []  # every host name a request named, in order
        super().__init__(("127.0.0.1", 0), _UpstreamHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    server: Upstream

    def do_GET(self) -> None:  # http.server names handlers after the verb
        host = (urlsplit(self.path).hostname or "").lower()
        self.server.asked.append(host)
        site = self.server.sites.get(host)
        if site is None:
            self.send_error(502, f"no such host {host}")
            return
        upstream = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
        upstream.request("GET", urlsplit(self.path).path or "/")
        answer = upstream.getresponse()
        body = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        host = self.path.rpartition(":")[0].lower()
        self.server.asked.append(host)
        site = self.server.sites.get(host)
        if site is None:
            self.send_error(502, f"no such host {host}")
            return
        with socket.create_connection(("127.0.0.1", site.port), timeout=10) as upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            _pipe(self.connection, upstream)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _pipe(a: socket.socket, b: socket.socket) -> None:
    while True:
        ready, _, _ = select.select([a, b], [], [], 10)
        if not ready:
            return
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


@contextlib.contextmanager
def two_sites() -> Iterator[tuple[Site, Site, Upstream]]:
    """`allowed.test` and `other.test`, and the upstream proxy that reaches both by name."""
    allowed, other = Site("allowed"), Site("other")
    upstream = Upstream({"allowed.test": allowed, "other.test": other})
    try:
        yield allowed, other, upstream
    finally:
        for server in (allowed, other, upstream):
            server.shutdown()
            server.server_close()
