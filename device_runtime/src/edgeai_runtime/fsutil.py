"""Filesystem helpers that every layer uses: atomic writes (``write_atomic`` for bytes,
``atomic_output`` for a stream), directory fsync, free space on the filesystem holding a path,
and the write points that the crash tests kill the process at. (A full disk is reported as
``store.DiskFull``, naming the filesystem, the bytes needed and the bytes free.)

Write points: every durable write of the store and of the OTA installer calls
:func:`write_point` just before it. With ``EDGEAI_RUNTIME_WRITE_TRACE=<file>`` each call appends
its label to that file; with ``EDGEAI_RUNTIME_CRASH_AT=<n>`` as well, the process sends itself
SIGKILL at the n-th point (n counts the file's lines), that is after exactly n - 1 writes. Without
the variables a write point does nothing. The tests enumerate the points with a trace run, then
kill at each one in turn (tests/device_runtime/test_crash_safety.py).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import tempfile
from typing import Any, BinaryIO, Dict, Iterator, Mapping, Optional, Tuple

TRACE_ENV = "EDGEAI_RUNTIME_WRITE_TRACE"
CRASH_ENV = "EDGEAI_RUNTIME_CRASH_AT"


def write_point(label: str) -> None:
    """Mark the place just before a durable write (see the module's docstring)."""
    trace = os.environ.get(TRACE_ENV)
    if not trace:
        return
    with open(trace, "a", encoding="utf-8") as f:
        f.write(label.replace("\n", " ") + "\n")
    crash_at = os.environ.get(CRASH_ENV)
    if crash_at:
        with open(trace, encoding="utf-8") as f:
            reached = sum(1 for _line in f)
        if reached == int(crash_at):
            os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing(path: str) -> str:
    """``path``, or its nearest ancestor that exists (what a path not yet created will live on)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds ``path``."""
    path = existing(path)
    dev = os.stat(path).st_dev
    while True:
        parent = os.path.dirname(path)
        if parent == path or os.stat(parent).st_dev != dev:
            return path
        path = parent


def space(path: str) -> Tuple[int, int]:
    """(bytes free to this user, block size) on the filesystem holding ``path``."""
    st = os.statvfs(existing(path))
    return st.f_bavail * st.f_frsize, st.f_bsize or 4096


def blocks(nbytes: int, block: int) -> int:
    """``nbytes`` rounded up to whole blocks (at least one: an empty file still takes an inode's worth)."""
    return max(1, -(-nbytes // block)) * block


def shortfall(needs: Mapping[str, int]) -> Optional[Tuple[str, int, int]]:
    """The first filesystem without room for what ``needs`` ({path: bytes}) puts on it, as
    (path, bytes needed, bytes free); None when all have room. Paths on one filesystem add up."""
    by_fs: Dict[int, Tuple[str, int]] = {}
    for path, nbytes in needs.items():
        dev = os.stat(existing(path)).st_dev
        first, total = by_fs.get(dev, (path, 0))
        by_fs[dev] = (first, total + nbytes)
    for path, nbytes in by_fs.values():
        free = space(path)[0]
        if free < nbytes:
            return path, nbytes, free
    return None


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str, data: bytes, mode: int, uid: int = -1, gid: int = -1, label: Optional[str] = None) -> None:
    """Write ``path`` as a whole or not at all: a temp file, fsynced, renamed over it, the directory
    fsynced. ``label``: what the write points call it (default: the file name)."""
    directory = os.path.dirname(os.path.abspath(path))
    label = label or os.path.basename(path)
    write_point("write %s (temp file)" % label)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        os.fchmod(fd, mode)
        if uid != -1 or gid != -1:
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        write_point("write %s (rename)" % label)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def read_json_or_none(path: str) -> Any:
    """The JSON in ``path``, or None when it is missing, unreadable or not JSON (what ``write_atomic``
    leaves is whole or absent, so None means "not written", never "half written")."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def atomic_output(out_path: str, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file written beside ``out_path`` and renamed into place (after fsync) only when the block
    ends without an exception; otherwise removed."""
    tmp = "%s.partial-%d" % (out_path, os.getpid())
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, out_path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def exclusive_lock(path: str, wait: bool = True, mode: int = 0o640) -> Iterator[bool]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block. Yields True; with
    ``wait`` off, yields False at once when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        held = True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if wait or exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            held = False
        yield held
    finally:
        os.close(fd)
