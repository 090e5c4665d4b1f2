"""A full disk for tests: writes to the artifact's binary files fail with ENOSPC."""

import errno
import io
import os

from compiler import artifact


class _FullDisk(io.RawIOBase):
    def writable(self):
        return True

    def write(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(monkeypatch) -> None:
    """From now on `compiler.artifact` opens each *.bin file for writing (it is created) and
    every write to it fails as on a full disk."""
    real_open = open

    def open_on_full_disk(path, mode="r", *args, **kw):
        if "w" in mode and str(path).endswith(".bin"):
            real_open(path, mode).close()
            return io.BufferedWriter(_FullDisk())
        return real_open(path, mode, *args, **kw)

    monkeypatch.setattr(artifact, "open", open_on_full_disk, raising=False)
