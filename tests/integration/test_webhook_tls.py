"""A webhook over HTTPS goes to the checked address yet verifies the certificate of the URL's
host (TLS server name and Host header from the URL, no second DNS lookup)."""

from __future__ import annotations

import asyncio
import http.server
import socket
import ssl
import threading
from typing import Any

import httpx
import pytest
import trustme

from job_handlers.notify import ssrf, webhook


def test_https_webhook_connects_to_the_checked_address_with_the_hosts_certificate() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            seen.append((self.headers["host"], self.headers["webhook-id"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    async def run() -> None:
        # the server listens where `resolve` will send the request (::1 or 127.0.0.1)
        first = await ssrf.resolve("https://localhost/", allow_private=True)

        class Server(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6 if first.address.version == 6 else socket.AF_INET

        server = Server((str(first.address), 0), Handler)
        server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(server_context)
        server.socket = server_context.wrap_socket(server.socket, server_side=True)
        port = server.server_address[1]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            target = await ssrf.resolve(f"https://localhost:{port}/hook?key=s3cret",
                                        allow_private=True)
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
            async with httpx.AsyncClient(verify=client_context, trust_env=False) as client:
                result = await webhook.deliver(client, target, message_id="msg_1", body=b"{}",
                                               secret="whsec_" + "A" * 32, timeout_s=5)
                assert result.delivered
                other = trustme.CA()
                wrong = ssl.create_default_context()
                other.configure_trust(wrong)
                async with httpx.AsyncClient(verify=wrong, trust_env=False) as untrusting:
                    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                        await webhook.deliver(untrusting, target, message_id="msg_2",
                                              body=b"{}", secret="whsec_" + "A" * 32,
                                              timeout_s=5)
        finally:
            server.shutdown()
            server.server_close()

    asyncio.run(run())
    assert seen[0][0].startswith("localhost:") and seen[0][1] == "msg_1"
