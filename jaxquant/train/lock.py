"""One process per workdir: an advisory lock held for the whole of a run.

Two identical commands started seconds apart on one workdir would both train and interleave
their ``metrics.jsonl`` and checkpoints. :func:`workdir_lock` takes an exclusive
``flock`` on ``<workdir>/.jaxquant.lock`` (one file per process index in a multi-process
run, so the hosts of one job never contend), and a second process fails at once with
:class:`WorkdirBusyError` naming the holder. The kernel releases a ``flock`` when its process
dies, so a lock left by a killed run never blocks the restart: the file stays, unlocked.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket

import jax

LOCK_FILE = ".jaxquant.lock"


class WorkdirBusyError(RuntimeError):
    """Another live process holds the workdir."""


def lock_path(workdir: str) -> str:
    """This process's lock file in ``workdir``."""
    suffix = f".{jax.process_index()}" if jax.process_count() > 1 else ""
    return os.path.join(workdir, LOCK_FILE + suffix)


def holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it: ``process P on host H since T``."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    return f"process {info.get('pid', '?')} on host {info.get('host', '?')} since {info.get('since', '?')}"


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Hold ``workdir`` for this process until the block ends; :class:`WorkdirBusyError` at
    once if a live process holds it."""
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(lock_path(workdir), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirBusyError(
                f"workdir {os.path.abspath(workdir)!r} is in use by {holder(fd)}: wait for that run "
                "to finish, stop it, or choose another --workdir"
            ) from None
        since = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
