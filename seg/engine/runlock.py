"""One training per run folder: an exclusive ``flock`` on ``<run>/.lock`` for the whole run.

The kernel releases a ``flock`` when its holder's open file goes away, on any exit (a crash and ``kill -9``
included), so a lock is never left stale: the file stays, but nobody holds it. The holder writes who it is (host,
PID, start time) into the file so that a second training in the folder can say whom it met. Data-loader workers
forked while the lock is held share it until they end (a few seconds after their main process dies).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
from pathlib import Path
from typing import Optional

from seg.errors import UserError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not guarded
    fcntl = None

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderBusy(UserError, RuntimeError):
    pass


class RunLock:
    """``with RunLock(run_dir):`` holds the folder for the block, or raises ``RunFolderBusy`` naming the holder."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        if fcntl is None:
            log.warning("no fcntl on this system: %s is not locked against a second training", self.path.parent)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 512).decode("utf-8", errors="replace").strip() or "a process that wrote no details"
            os.close(fd)
            raise RunFolderBusy(f"another training is running in {self.path.parent} ({holder}): wait for it to end "
                                "or stop it, or train into another folder (hydra.run.dir=...)") from None
        except OSError as error:  # a file system without flock (ENOLCK, EOPNOTSUPP): train, but say so
            os.close(fd)
            log.warning("cannot lock %s (%s): a second training in this folder would not be stopped", self.path,
                        error.strerror or error)
            return self
        except BaseException:
            os.close(fd)
            raise
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.write(fd, f"host {socket.gethostname()}, PID {os.getpid()}, started {started}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock; the file stays (removing it would race with a new holder)
            self.fd = None
