"""A stand-in of the service's HTTP API for CLI tests: a real HTTP server on loopback."""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

# respond(method, path with query, headers, JSON body or None) -> (status, JSON body)
Respond = Callable[[str, str, object, object], tuple[int, object]]


@pytest.fixture
def stand_in(monkeypatch):
    """`stand_in(respond)` starts a server answering every GET and POST with `respond` and returns its URL;
    servers stop after the test. FLOWROUTER_API_KEY is unset so the CLI sends only the keys a test gives it."""
    monkeypatch.delenv("FLOWROUTER_API_KEY", raising=False)
    servers = []

    def start(respond: Respond) -> str:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, out = respond(method, self.path, self.headers, body)
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
