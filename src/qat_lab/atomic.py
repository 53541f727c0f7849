"""The one way qat_lab writes a file that someone else may read: all of it, or none of it.

The content goes to a temp file in the target's own folder (so the rename cannot cross a
filesystem), is fsynced, and is renamed over the target; the folder is fsynced so the rename
survives a power cut. A reader therefore sees the old file or the new one, never half of either,
and a writer that fails (a full disk, a serialisation error, a signal) leaves the old file and no
temp file behind.

A folder of files that belong together (a token cache) is built the same way by atomic_dir:
filled under a temp name, every file fsynced, renamed into place whole.

Files are created with mode 0666 minus the umask (0644 under the usual 022), not the 0600 of
tempfile.mkstemp: run records, histories and caches on a shared filesystem must be readable by
the colleague who analyses them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator


def temp_path(path: Path) -> Path:
    """A fresh hidden name beside `path` (pid + random part: concurrent writers never collide)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some filesystems refuse fsync on a directory; the file's fsync is what counts
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path to write to (by any means: open, torch.save, a shard writer); on a clean
    exit it replaces `path`. On an exception the temp file is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    # O_EXCL: never write through a name someone else created; 0o666 lets the umask decide.
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync(path.parent, directory=True)


def atomic_write(path: str | Path, data: bytes | str, fsync: bool = True) -> Path:
    """Write `data` (text is UTF-8 encoded) to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_output(path, fsync) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a fresh temp folder beside `path` to fill; on a clean exit every file in it is fsynced
    and the folder is renamed to `path`, so a reader sees all of it or nothing.

    If another writer put a complete `path` in place first, the rename cannot replace it (the
    folder is not empty): theirs is kept and this copy dropped. The temp folder never outlives
    the block, whatever happens in it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    tmp.mkdir()
    try:
        yield tmp
        if fsync:
            # Deepest first, so each folder is synced after the entries in it.
            for entry in sorted(tmp.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                _fsync(entry, directory=entry.is_dir())
            _fsync(tmp, directory=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if fsync:
        _fsync(path.parent, directory=True)
