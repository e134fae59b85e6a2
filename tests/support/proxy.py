"""A TCP proxy on loopback between the service and a server, failing the way networks fail.

- `go_silent()`: connections stay open but nothing passes, no FIN, no RST: what a dead Wi-Fi or
  a laptop lid does to an IMAP connection.
- `reset_after(n)` / `silent_after(n)`: the connection that carries the next `n` bytes from the
  server is then reset (RST) or goes silent, e.g. in the middle of a large FETCH.
- `stall_after_data(forward_end)`: the next SMTP connection whose client ends DATA (CRLF . CRLF)
  passes nothing more; with `forward_end` the server gets the whole mail and its answer is held
  back, so the client cannot know whether the mail went (an unknown outcome).
- `cut()` / `restore()`: every connection is reset, and new ones are reset at once, until
  restored: the server is unreachable.

Each fault fires once (on one connection) unless it says otherwise.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading

END_OF_DATA = b"\r\n.\r\n"


def _reset(sock: socket.socket) -> None:
    """Close with RST instead of FIN (SO_LINGER with a zero timeout)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Link:
    """One proxied connection and its own fault state."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.silent = threading.Event()
        self.reset = threading.Event()
        self.tail = b""  # the last bytes from the client, to find END_OF_DATA across reads


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.links: list[_Link] = []
        self.accepted = 0
        self.faults_fired: list[str] = []
        self.from_clients = bytearray()  # everything the clients sent, to see where they are
        self.closing = threading.Event()
        self.refusing = threading.Event()
        self.lock = threading.Lock()
        self.server_budget: tuple[int, str] | None = None  # (bytes left, "reset" | "silent")
        self.stall: bool | None = None  # None: no stall armed; else forward the end of DATA?
        threading.Thread(target=self._accept, daemon=True).start()

    # ------------------------------------------------------------ faults

    def go_silent(self) -> None:
        """Every connection open now stops passing data, without closing."""
        for link in list(self.links):
            link.silent.set()

    def reset_after(self, server_bytes: int) -> None:
        with self.lock:
            self.server_budget = (server_bytes, "reset")

    def silent_after(self, server_bytes: int) -> None:
        with self.lock:
            self.server_budget = (server_bytes, "silent")

    def stall_after_data(self, forward_end: bool) -> None:
        with self.lock:
            self.stall = forward_end

    def cut(self) -> None:
        self.refusing.set()
        self.faults_fired.append("cut")
        for link in list(self.links):
            link.reset.set()

    def restore(self) -> None:
        self.refusing.clear()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for link in list(self.links):
            for sock in (link.client, link.upstream):
                sock.close()

    # ------------------------------------------------------------ plumbing

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing.is_set():
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                _reset(client)
                continue
            link = _Link(client, upstream)
            self.links.append(link)
            self.accepted += 1
            threading.Thread(target=self._pump, args=(link,), daemon=True).start()

    def _pump(self, link: _Link) -> None:
        try:
            while not self.closing.is_set():
                readable, _, _ = select.select([link.client, link.upstream], [], [], 0.1)
                if link.reset.is_set():
                    _reset(link.client)
                    link.upstream.close()
                    return
                if link.silent.is_set():
                    continue  # hold the sockets open, pass nothing on
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        link.client.close()
                        link.upstream.close()
                        return
                    if sock is link.upstream:
                        self._to_client(link, data)
                    else:
                        self._to_server(link, data)
        except OSError:
            return

    def _to_client(self, link: _Link, data: bytes) -> None:
        with self.lock:
            budget = self.server_budget
            if budget is not None and len(data) >= budget[0]:
                self.server_budget = None
                data = data[: budget[0]]
                (link.reset if budget[1] == "reset" else link.silent).set()
                self.faults_fired.append(f"{budget[1]} after server bytes")
            elif budget is not None:
                self.server_budget = (budget[0] - len(data), budget[1])
        link.client.sendall(data)

    def _to_server(self, link: _Link, data: bytes) -> None:
        with self.lock:
            self.from_clients += data
            forward_end = self.stall
            seen = link.tail + data
            end = seen.find(END_OF_DATA) if forward_end is not None else -1
            if end >= 0:
                self.stall = None
                self.faults_fired.append("stall after DATA")
                cut_at = end + len(END_OF_DATA) if forward_end else end
                data = data[: max(cut_at - len(link.tail), 0)]
                link.silent.set()
            link.tail = seen[-(len(END_OF_DATA) - 1):]
        if data:
            link.upstream.sendall(data)


SilentProxy = FaultProxy  # the name the first tests used
