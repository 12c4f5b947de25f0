"""One run per output folder: a lock that the kernel releases when its process ends.

The lock is `fcntl.flock` on `<folder>/.lock`, so a run killed in any way (even with SIGKILL, or
by a power cut) leaves no stale lock behind: the next run simply takes it. The file names the
process holding it, for the message of a run that is refused.
"""
import contextlib
import json
import os
import socket
import sys
import time
from typing import Iterator, Sequence

from utils.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not kept apart there
    fcntl = None

LOCK_FILE = ".lock"


def _holder(handle) -> str:
    """'PID 123 on host, started ..., command: ...' from the lock file's content."""
    try:
        handle.seek(0)
        owner = json.loads(handle.read())
    except (OSError, ValueError):  # the other run holds the lock but has not written it yet
        return "a process that is starting"
    host = "" if owner.get("host") == socket.gethostname() else f" on {owner.get('host')}"
    return (f"PID {owner.get('pid')}{host}, started {owner.get('started')}, "
            f"command: {owner.get('command')}")


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold `folder`'s lock while the block runs; a live process holding it already is a
    UserError naming the folder and that process."""
    if fcntl is None:
        yield
        return
    path = os.path.join(folder, LOCK_FILE)
    try:
        os.makedirs(folder, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot create the lock file {path}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{folder} is in use by another run ({_holder(handle)}); wait for it "
                            "to end, or write to another folder") from None
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(owner))
            handle.flush()
        except OSError:  # a full disk: the lock holds all the same, only unnamed
            pass
        yield
    finally:
        handle.close()  # releases the lock


@contextlib.contextmanager
def folder_locks(folders: Sequence[str]) -> Iterator[None]:
    """The locks of several folders (each once, however it is spelled)."""
    unique = {}
    for folder in folders:
        unique.setdefault(os.path.realpath(folder), folder)
    with contextlib.ExitStack() as stack:
        for folder in unique.values():
            stack.enter_context(folder_lock(folder))
        yield
