"""Real receivers for delivery tests: an SMTP server (aiosmtpd) and an HTTP webhook endpoint,
both in-process on free ports, recording what arrives and when."""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


def free_port() -> int:
    # aiosmtpd's Controller(port=0) does not work: pick a free port first.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Received:
    at: float
    to: list[str]
    message: EmailMessage
    peer: str = ""  # the client's address and port: one per SMTP session

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        assert body is not None, f"no text/{subtype} part"
        return str(body.get_content())


@dataclass
class SmtpCatcher:
    """An SMTP server that keeps every message; stop() and start() again on the same port."""

    port: int = field(default_factory=free_port)
    messages: list[Received] = field(default_factory=list)
    _controller: Controller | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = email.message_from_bytes(content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(Received(time.time(), list(envelope.rcpt_tos), message,
                                          str(session.peer)))
        return "250 OK"

    def start(self) -> SmtpCatcher:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, address: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if address in m.to]

    def count(self) -> int:
        with self._lock:
            return len(self.messages)


@dataclass
class Request:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


class WebhookReceiver:
    """An HTTP endpoint answering from a script of status codes (then 200), recording requests."""

    def __init__(self, script: list[int | tuple[int, dict[str, str]]] | None = None):
        self.script = list(script or [])
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(Request(
                        time.time(), self.path, {k.lower(): v for k, v in self.headers.items()},
                        body))
                    answer = receiver.script.pop(0) if receiver.script else 200
                status, headers = answer if isinstance(answer, tuple) else (answer, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/grails"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)
