"""An app served by uvicorn in a background thread on a free loopback port: for the browser tests and the
screenshot script, which drive a real server from the same process."""

from __future__ import annotations

import socket
import threading
import time


class LoopbackServer:
    """``with LoopbackServer(app) as s: ... s.url``. The socket is bound before the thread starts: no port race.

    ``host="::1"`` serves on IPv6 loopback (``OSError`` where the machine has none)."""

    def __init__(self, app, start_timeout: float = 20.0, host: str = "127.0.0.1"):
        import uvicorn

        ipv6 = ":" in host
        self.sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.sock.bind((host, 0))
        except OSError:
            self.sock.close()
            raise
        self.url = f"http://{f'[{host}]' if ipv6 else host}:{self.sock.getsockname()[1]}/"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.start_timeout = start_timeout

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
