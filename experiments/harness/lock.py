"""One writer per run folder, and one runner per suite job: advisory file locks.

A lock is `fcntl.flock` on an open file descriptor, held for as long as the work lasts. The
kernel releases it when the process ends, however it ends (SIGKILL and power loss included), so
a dead writer never leaves a stale lock behind, and no lock file needs cleaning up. The file
says who holds it (pid, host, since) for the message a second writer gets.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ParamSpec, TypeVar

from experiments.harness.config import UserError

_held: list[FileLock] = []  # run locks this process holds, newest last
RUN_LOCK_FILE = ".lock"  # in a run folder, beside record.json
CLAIMS_DIR = ".claims"  # in a runs folder: one lock file per suite job (hash and seed)
P = ParamSpec("P")
T = TypeVar("T")


class FileLock:
    """An exclusive flock on `path` (created if missing); `holder()` says who has it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = False) -> bool:
        """Take the lock; False when another process holds it and `blocking` is off."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                        time.gmtime())}).encode())
        self.fd = fd
        return True

    def release(self) -> None:
        """Give the lock up (closing the descriptor releases it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def holder(self) -> str:
        """Who holds the lock, as the lock file says: `pid 123 on host h since ...`."""
        try:
            who = json.loads(self.path.read_text())
            return f"pid {who['pid']} on host {who['host']} (since {who['since']})"
        except (OSError, ValueError, KeyError):
            return "another process"


def hold_run(run_dir: Path) -> FileLock:
    """The run folder's writer lock, taken now; a UserError naming the process that holds it."""
    lock = FileLock(run_dir / RUN_LOCK_FILE)
    if not lock.acquire():
        raise UserError(f"run {run_dir.name} is being written by {lock.holder()}; one process "
                        "writes a run: wait for it to end, or stop it and resume again")
    _held.append(lock)
    return lock


def releasing(fn: Callable[P, T]) -> Callable[P, T]:
    """`fn`, releasing every run lock taken during its call when it returns or raises (a
    process that ends releases them anyway; this is for runs that follow in one process)."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        mark = len(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_held) > mark:
                _held.pop().release()

    return wrapper


@contextmanager
def claim_job(runs_dir: Path, key: str) -> Iterator[bool]:
    """Hold the claim on suite job `key` for the block; yields whether another process held it
    first (the block then waits for it and should check whether the job is now done)."""
    lock = FileLock(runs_dir / CLAIMS_DIR / f"{key}.lock")
    waited = not lock.acquire()
    if waited:
        print(f"  waiting: {lock.holder()} is running this job", flush=True)
        lock.acquire(blocking=True)
    try:
        yield waited
    finally:
        lock.release()
