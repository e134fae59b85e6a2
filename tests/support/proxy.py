"""A TCP proxy on loopback that can go silent: connections stay open but nothing passes.

This is what a dead Wi-Fi or a laptop lid does to an IMAP connection: no FIN, no RST.
"""

from __future__ import annotations

import select
import socket
import threading


class SilentProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.silenced: list[threading.Event] = []
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        self.closing = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            silent = threading.Event()
            self.silenced.append(silent)
            self.accepted += 1
            pump = threading.Thread(target=self._pump, args=(client, upstream, silent), daemon=True)
            pump.start()

    def _pump(self, client: socket.socket, upstream: socket.socket,
              silent: threading.Event) -> None:
        pairs = {client: upstream, upstream: client}
        try:
            while not self.closing.is_set():
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                if silent.is_set():
                    continue  # hold the sockets open, pass nothing on
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    pairs[sock].sendall(data)
        except OSError:
            return
        finally:
            if not silent.is_set():
                client.close()
                upstream.close()

    def go_silent(self) -> None:
        """Every connection open now stops passing data, without closing."""
        for event in self.silenced:
            event.set()

    def close(self) -> None:
        self.closing.set()
        self.listener.close()
        for sock in self.sockets:
            sock.close()
