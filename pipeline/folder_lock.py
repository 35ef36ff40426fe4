"""The exclusive lock a run holds on its output folder.

Two runs on one folder would each pay for every row and tidy away the other's
files. The lock is an OS advisory lock (``flock``) on ``DIR/.lock``: the kernel
drops it when the process ends, however it ends, so a ``kill -9`` never leaves
a stale lock behind. The holder's pid is written into the file only to name it
in the refusal; the lock itself is the flock, not the file's presence.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import FolderLockedError, JournalError

try:  # POSIX; elsewhere the folder is not locked (said once at the call site)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


class FolderLock:
    """Held from ``acquire()`` until ``release()`` or the end of the process.

    Each writer of a folder has its own lock (``.lock`` for the default writer,
    ``.lock-<id>`` for a shard's), so two runs of one writer never overlap.
    """

    def __init__(self, folder: Path, *, writer_id: str = "") -> None:
        self.path = folder / (f"{LOCK_NAME}-{writer_id}" if writer_id else LOCK_NAME)
        self._fd: int | None = None

    @property
    def supported(self) -> bool:
        return fcntl is not None

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(f"{self.path.parent}: cannot create the lock file ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise FolderLockedError(
                f"{self.path.parent} is in use by another caption run ({who}); wait for it to finish "
                "or stop it, or choose another --out folder"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise JournalError(f"{self.path}: cannot lock the output folder ({exc.strerror})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def any_held(folder: Path) -> bool:
    """Whether a live process holds any writer's lock on the folder (a run going on).

    A shared lock is tried and dropped at once on each lock file: it fails only while a
    writer holds its exclusive one. No lock file, or no ``flock`` here: not held.
    """
    if fcntl is None:
        return False
    for path in sorted(folder.glob(f"{LOCK_NAME}*")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: a writer holds it
            return True
        finally:
            os.close(fd)  # closing drops the shared lock if it was taken
    return False


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
