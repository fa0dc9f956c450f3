"""The life cycle shared by the local fake services: a ThreadingHTTPServer on 127.0.0.1 (port 0) in a daemon
thread, whose handler finds the fake as `server.fake`, and a stop event that releases stalled handlers."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LocalServer:
    handler_class: type[BaseHTTPRequestHandler]

    def _init_server(self) -> None:
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self):
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler_class)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the fake first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


def write_reply(handler: BaseHTTPRequestHandler, status: int, payload: bytes, content_type: str | None,
                headers: dict[str, str]) -> None:
    """Send one answer; a client that already gave up (its timeout) is not an error of the fake."""
    try:
        handler.send_response(status)
        if content_type:
            handler.send_header("content-type", content_type)
        handler.send_header("content-length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(payload)
    except (BrokenPipeError, ConnectionResetError):
        return
