"""Stopping the processes integration tests start (services, Ray daemons, killed jobs)."""

from __future__ import annotations

import socket
import threading
from typing import Any


def stop_processes(procs: list[Any], grace: float = 5.0) -> None:
    """SIGTERM `procs` (psutil.Process), wait up to `grace` seconds, then SIGKILL what is left.
    grace=0 kills at once."""
    import psutil

    alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if grace > 0:
        for p in alive:
            try:
                p.terminate()
            except psutil.Error:
                pass
        _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=10)


class TcpProxy:
    """A loopback TCP forwarder in front of a server (S3, MLflow): `stop()` closes its port and
    every connection through it, as if the server went down, and `start()` opens the same port
    again. The server behind it keeps its state (moto keeps objects in memory only: a restarted
    moto would come back empty)."""

    def __init__(self, target_port: int, port: int) -> None:
        self.target_port, self.port = target_port, port
        self.url = f"http://127.0.0.1:{port}"
        self._listener: Any = None
        self._conns: list[Any] = []
        self._lock = threading.Lock()

    def start(self) -> "TcpProxy":
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def _accept(self, listener: Any) -> None:
        while True:
            try:
                client, _ = listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                return  # stopped
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass
