"""Stopping the processes integration tests start (services, Ray daemons, killed jobs)."""

from __future__ import annotations

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
