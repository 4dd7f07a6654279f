"""Test HTTP server for redprobe end-to-end tests (see servers.ts, routes.ts).

Usage: python3 python_server.py PORT LOGFILE [CERTFILE KEYFILE]

With a certificate and key it serves HTTPS (Python's ssl module, over the system's libssl).

Serves the shared route set on 127.0.0.1:PORT and appends, per request, the seconds it spent
between entering do_GET/do_POST/do_HEAD and just before end_headers() flushes the status line.
The record is written BEFORE the response goes out, so by the time a client has read a response
its record is already in LOGFILE.
"""

import re
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HELLO_BODY = b"hello\n"
USER_BODY = b"user\n"
SUBMIT_BODY = b"ok\n"
BIG_BODY = b"0123456789abcdef" * 4096
USER_PATH = re.compile(r"^/users/[0-9]+$")


class BadRequestBody(Exception):
    pass


class TimingLog:
    def __init__(self, path):
        self._file = open(path, "a", encoding="ascii")
        self._lock = threading.Lock()

    def record(self, seconds):
        with self._lock:
            self._file.write(f"{seconds:.9f}\n")
            self._file.flush()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; requires Content-Length on every response
    server_version = "redprobe-python"
    sys_version = ""
    # Status line+headers and body are separate writes; with Nagle on, a keep-alive client would
    # see ~40 ms delayed-ACK stalls that have nothing to do with the server's own work.
    disable_nagle_algorithm = True
    timing_log = None  # set in main()

    def log_message(self, format, *args):
        pass

    def do_GET(self):
        self._serve(time.perf_counter(), send_body=True)

    def do_HEAD(self):
        self._serve(time.perf_counter(), send_body=False)

    def do_POST(self):
        self._serve(time.perf_counter(), send_body=True)

    def _serve(self, started, send_body):
        try:
            self._read_body()
        except BadRequestBody:
            self.close_connection = True
            self._respond(started, 400, b"bad request body\n", send_body)
            return
        status, body = self._route()
        self._respond(started, status, body, send_body)

    def _route(self):
        path = self.path.split("?", 1)[0]
        if self.command == "POST":
            return (200, SUBMIT_BODY) if path == "/submit" else (404, b"not found\n")
        if path == "/hello":
            return 200, HELLO_BODY
        if path == "/big":
            return 200, BIG_BODY
        if path == "/error":
            return 500, b"error\n"
        if USER_PATH.match(path):
            return 200, USER_BODY
        return 404, b"not found\n"

    def _read_body(self):
        """Consumes the whole request body so the next keep-alive request starts cleanly."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._read_chunked()
            return
        length = self.headers.get("Content-Length")
        if length is None:
            return
        if not length.isdigit():
            raise BadRequestBody()
        remaining = int(length)
        while remaining > 0:
            data = self.rfile.read(min(remaining, 65536))
            if not data:
                raise BadRequestBody()
            remaining -= len(data)

    def _read_chunked(self):
        while True:
            line = self.rfile.readline(1024)
            if not line.endswith(b"\r\n"):
                raise BadRequestBody()
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadRequestBody()
            if size == 0:
                break
            if len(self.rfile.read(size)) != size or self.rfile.read(2) != b"\r\n":
                raise BadRequestBody()
        while True:  # trailer section ends with an empty line
            line = self.rfile.readline(8192)
            if line == b"\r\n":
                return
            if not line.endswith(b"\r\n"):
                raise BadRequestBody()

    def _respond(self, started, status, body, send_body):
        self.send_response(status)  # buffered, not yet on the wire
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        Handler.timing_log.record(time.perf_counter() - started)
        self.end_headers()  # flushes status line + headers
        if send_body:
            self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        # A client hanging up mid-request is normal in tests; anything else is worth seeing.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


def main():
    port, log_path = int(sys.argv[1]), sys.argv[2]
    Handler.timing_log = TimingLog(log_path)
    with Server(("127.0.0.1", port), Handler) as server:
        if len(sys.argv) > 4:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(sys.argv[3], sys.argv[4])
            # The handshake happens in the handler thread, on the first read, not in accept():
            # a connection that never starts one cannot hold up the accept loop.
            server.socket = context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        server.serve_forever()


if __name__ == "__main__":
    main()
