"""A local upstream that answers every request with what it received, as JSON.

    {"method": "GET", "path": "/x?y=1", "headers": [["host", "..."], ...], "body": "..."}

Used by the harness, the demo and docker-compose. Run directly: python echo_upstream.py --port 8080
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            body = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self) -> None:
        body = self._read_body()
        payload = json.dumps(
            {
                "method": self.command,
                "path": self.path,
                "headers": [[k.lower(), v] for k, v in self.headers.items()],
                "body": body.decode("utf-8", "replace"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        # An answer to HEAD has no body: bytes written here would be read by the proxy as the
        # start of the next answer on this connection.
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


class StaticServer(BaseHTTPRequestHandler):
    """Serves `server.content` (bytes) with `server.status` (after `server.delay` seconds);
    used as a JWKS endpoint."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.hits += 1
        time.sleep(getattr(self.server, "delay", 0))
        body = self.server.content
        # One request per connection, so stop() really takes the endpoint away.
        self.close_connection = True
        self.send_response(self.server.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        # Envoy resets upstream requests it refuses mid-body (webhook denials): expected here.
        pass


class BackgroundServer:
    """An HTTP server on 127.0.0.1 in a thread; `stop()` frees the port, `start()` reuses it."""

    def __init__(self, handler, port: int = 0, **attrs):
        self.handler, self.attrs = handler, attrs
        self.port = port
        self.httpd = None
        self.start()

    def start(self) -> None:
        self.httpd = _QuietServer(("127.0.0.1", self.port), self.handler)
        for k, v in self.attrs.items():
            setattr(self.httpd, k, v)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.httpd is not None:
            self.attrs = {k: getattr(self.httpd, k) for k in self.attrs}
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None

    def set(self, **attrs) -> None:
        self.attrs.update(attrs)
        if self.httpd is not None:
            for k, v in attrs.items():
                setattr(self.httpd, k, v)


def echo_server(port: int = 0) -> BackgroundServer:
    return BackgroundServer(_Echo, port)


def jwks_server(content: bytes, status: int = 200, delay: float = 0) -> BackgroundServer:
    return BackgroundServer(StaticServer, 0, content=content, status=status, hits=0, delay=delay)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), _Echo)
    print(f"echo upstream on {args.host}:{args.port}", flush=True)
    server.serve_forever()
