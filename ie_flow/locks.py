"""One job at a time in a folder: a `_lock` object in the dataset folder (stage 1) or the results
folder (stage 2), created with an exclusive create (a conditional PUT on S3) and holding its
owner's host, pid and start time. A second job on the same folder is refused with one line that
names the holder. A lock whose holder ran on this host and is gone (a killed job) is stale and
taken over; a lock from another host is never guessed at: the message says how to remove it.
docs/RELIABILITY.md describes what this does and does not guarantee."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from typing import Any, Iterator

from ie_flow import IEFlowError
from ie_flow.storage import Storage

LOCK = "_lock"
log = logging.getLogger("ie_flow")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _stale(holder: dict[str, Any]) -> bool:
    """Held by a process of this host that no longer runs."""
    return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0)))


def _describe(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {since}"


def acquire(storage: Storage, what: str) -> dict[str, Any]:
    """Take the lock of `storage` for `what` (e.g. "stage 1") or raise IEFlowError naming its holder."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "what": what,
              "token": uuid.uuid4().hex}
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    for _ in range(2):  # a stale lock is removed once, then the exclusive create is tried again
        if storage.create_bytes(LOCK, data):
            return record
        try:
            holder = storage.read_json(LOCK)
        except FileNotFoundError:  # released between our create and our read
            continue
        if not _stale(holder):
            raise IEFlowError(
                f"{storage.url()} is in use by another ie-flow job ({holder.get('what', 'a job')}: "
                f"{_describe(holder)}); wait for it to finish, or if that job is gone, delete {storage.url(LOCK)}")
        log.warning("%s: taking over the lock of a job that is gone (%s)", storage.url(), _describe(holder))
        storage.remove(LOCK)
    raise IEFlowError(f"could not lock {storage.url()}: another job keeps taking it")


def release(storage: Storage, record: dict[str, Any]) -> None:
    """Remove the lock if it is still ours."""
    with contextlib.suppress(Exception):  # never hide the job's own outcome (storage may be down)
        if storage.read_json(LOCK).get("token") == record["token"]:
            storage.remove(LOCK)


@contextlib.contextmanager
def locked(storage: Storage, what: str) -> Iterator[None]:
    """`with locked(folder.storage, "stage 1"):` the work that writes into that folder."""
    record = acquire(storage, what)
    try:
        yield
    finally:
        release(storage, record)
