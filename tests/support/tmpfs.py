"""Real small filesystems for disk-full tests: a tmpfs of a given size (root only), and filling it
so that exactly a given number of bytes stays free."""
from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

FILLER = ".filler"


class Tmpfs:
    """Mounts tmpfs filesystems under a test's directory and unmounts them all in ``close``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.mounted = []

    def mount(self, size: int, name: str = "tmpfs") -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        path = self.base / name
        path.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d,mode=0755" % size, "tmpfs", str(path)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: %s" % done.stderr.strip())
        self.mounted.append(path)
        return path

    def close(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", str(path)], check=False)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def leave_free(mount: Path, nbytes: int) -> None:
    """Allocate a filler file so that exactly ``nbytes`` (a multiple of the page size) stay free."""
    filler = mount / FILLER
    with open(filler, "ab") as f:
        current = os.fstat(f.fileno()).st_size
        grow = free_bytes(mount) - nbytes
        if grow > 0:
            os.posix_fallocate(f.fileno(), current, grow)
        elif grow < 0:
            os.truncate(filler, max(current + grow, 0))
    assert free_bytes(mount) == nbytes, (free_bytes(mount), nbytes)


def fill(mount: Path) -> None:
    """Fill the filesystem to the last byte (what another writer on the device can do at any moment)."""
    fd = os.open(mount / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        free = free_bytes(mount)
        if free:
            os.posix_fallocate(fd, os.fstat(fd).st_size, free)
        try:  # whatever a partial page still takes
            while True:
                os.write(fd, b"\0" * 512)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    finally:
        os.close(fd)
    assert free_bytes(mount) == 0


def unfill(mount: Path) -> None:
    try:
        os.unlink(mount / FILLER)
    except FileNotFoundError:
        pass
