"""A real MJPEG-over-HTTP server on 127.0.0.1 for tests: a camera stand-in that can be killed, restarted or stalled."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time

import numpy as np


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        import cv2

        self.send_response(200)
        self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
        self.end_headers()
        server = self.server
        try:
            while not server.stopping.is_set():
                if server.stall_after is not None and server.counter >= server.stall_after:
                    server.stopping.wait()  # a hung camera: the connection stays open, nothing more arrives
                    break
                i = server.counter
                server.counter += 1
                big = server.resize_after is not None and i >= server.resize_after
                image = np.full((120, 160, 3) if big else (48, 64, 3), (i * 7) % 256, np.uint8)
                ok, buf = cv2.imencode(".jpg", image)
                self.wfile.write(
                    b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(buf)
                    + buf.tobytes()
                    + b"\r\n"
                )
                time.sleep(1 / server.fps)
        except (BrokenPipeError, ConnectionResetError):
            pass


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MjpegServer:
    def __init__(
        self, port: int = 0, fps: float = 25.0, stall_after: int | None = None, resize_after: int | None = None
    ):
        """`stall_after=N`: send N frames, then keep the connection open and send nothing more.
        `resize_after=N`: frames are 64x48 until the Nth, then 160x120 on the same connection (a camera
        reconfigured)."""
        self.fps, self._port, self.stall_after, self.resize_after = fps, port, stall_after, resize_after
        self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/stream.mjpg"

    def start(self) -> MjpegServer:
        self._server = _Server(("127.0.0.1", self._port), _Handler)
        self._server.stopping, self._server.counter, self._server.fps = threading.Event(), 0, self.fps
        self._server.stall_after, self._server.resize_after = self.stall_after, self.resize_after
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def unstall(self) -> None:
        """Serve frames again on new connections (a stalled one stays silent, as a hung camera's would)."""
        self.stall_after = self._server.stall_after = None

    def kill(self) -> None:
        """Stop serving and drop open connections, as a crashed camera would."""
        self._server.stopping.set()
        self._server.shutdown()
        self._server.server_close()
