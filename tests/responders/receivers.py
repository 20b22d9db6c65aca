"""Loopback peers for delivery tests: a webhook receiver that can be down, an SMTP server."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from responders.delivery import verify


@dataclass
class Received:
    key: str
    attempt: int
    body: bytes
    signature_ok: bool
    host: str = ""
    signature: str = ""
    timestamp: str = ""


@dataclass
class WebhookReceiver:
    secret: str
    up: bool = True
    received: list[Received] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not outer.up:
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append(Received(
                    self.headers["X-Tocsin-Idempotency-Key"],
                    int(self.headers["X-Tocsin-Attempt"]), body,
                    verify(outer.secret, body, self.headers.get("X-Tocsin-Signature", ""),
                           self.headers.get("X-Tocsin-Timestamp", "")),
                    self.headers.get("Host", ""), self.headers.get("X-Tocsin-Signature", ""),
                    self.headers.get("X-Tocsin-Timestamp", "")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cap"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def unique_keys(self) -> set[str]:
        return {r.key for r in self.received}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Trickler:
    """A peer that answers one byte every ``every_s`` seconds and never finishes (for
    up to ``for_s``): an HTTP status line and headers, or an SMTP greeting. Every read
    a client makes gets a byte well within its read timeout."""

    def __init__(self, line: bytes, every_s: float = 0.2, for_s: float = 60.0) -> None:
        import socket

        self.srv = socket.socket()
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen()
        self.port = self.srv.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()

        def serve() -> None:
            while not self.stop.is_set():
                try:
                    conn, _ = self.srv.accept()
                except OSError:
                    return
                self.connections += 1
                threading.Thread(target=trickle, args=(conn,), daemon=True).start()

        def trickle(conn: socket.socket) -> None:
            data = line + b"X" * int(for_s / every_s)
            with conn:
                for i in range(len(data)):
                    if self.stop.wait(every_s):
                        return
                    try:
                        conn.send(data[i:i + 1])
                    except OSError:  # the client hung up
                        return

        threading.Thread(target=serve, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.srv.close()
