"""Binary token shards in the modded-nanogpt / parameter-golf layout, read without loading them.

A shard is a 1024-byte header of 256 little-endian int32 (header[0] = magic 20240520,
header[1] = version 1, header[2] = number of tokens, the rest 0) followed by that many
little-endian uint16 tokens. A dataset is the sorted list of files matching a glob (one for
train, one for val); their tokens form one stream.

Reading is streaming: each shard is opened as a numpy memmap (lazily, at most `MAX_OPEN` at a
time), and a window is copied out of the pages it touches, so memory does not grow with the
dataset. `ShardSet` slices like a 1-D array (`tokens[a:b]`, across shard boundaries), which is all
`RandomWindows` and `val_batches` need.

The command-line tool that tokenises a corpus into shards is `qatlab-shards` (data/prepare.py).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qat_lab.atomic import atomic_output
from qat_lab.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKEN = np.iinfo(np.uint16).max
SHARD_TOKENS = 100_000_000
"""Tokens per shard written by our tools (modded-nanogpt's fineweb shards hold 1e8)."""
MAX_OPEN = 64
"""Shards kept memory-mapped at once by a ShardSet (file descriptors stay bounded)."""
FINGERPRINT_SAMPLE = 1 << 20
"""Bytes hashed from the start and from the end of each file by `sampled_fingerprint`."""


def _header(n_tokens: int) -> bytes:
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[0], h[1], h[2] = MAGIC, VERSION, n_tokens
    return h.tobytes()


def _as_tokens(tokens, where: str) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise DataError(f"{where}: tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_TOKEN):
        raise DataError(f"{where}: token ids must be in [0, {MAX_TOKEN}] for uint16 shards")
    return arr.astype(TOKEN_DTYPE, copy=False)


def write_shard(path: str | Path, tokens) -> Path:
    """Write one shard atomically (temp file + rename); returns its path."""
    path = Path(path)
    arr = _as_tokens(tokens, str(path))
    if len(arr) > np.iinfo(np.int32).max:
        raise DataError(f"{path}: {len(arr)} tokens do not fit one shard's int32 count")
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(_header(len(arr)))
        f.write(arr.tobytes())
    return path


class ShardWriter:
    """Appends token arrays to numbered shards `<dir>/<stem>_<i:06d>.bin`, `shard_tokens` each.

    Tokens are streamed to disk as they come (a shard is never held in memory); each shard's
    header count is filled in when it is closed.
    """

    def __init__(self, directory: str | Path, stem: str, shard_tokens: int = SHARD_TOKENS):
        if shard_tokens <= 0:
            raise DataError(f"shard_tokens={shard_tokens} must be positive")
        self.directory, self.stem, self.shard_tokens = Path(directory), stem, shard_tokens
        self.directory.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self.n_tokens = 0
        self._file = None
        self._in_shard = 0

    def _open(self) -> None:
        path = self.directory / f"{self.stem}_{len(self.paths):06d}.bin"
        self._file = open(path, "wb")
        self._file.write(_header(0))
        self.paths.append(path)
        self._in_shard = 0

    def _close_shard(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.write(_header(self._in_shard))
            self._file.close()
            self._file = None

    def write(self, tokens) -> None:
        arr = _as_tokens(tokens, f"{self.directory / self.stem}")
        while len(arr):
            if self._file is None or self._in_shard == self.shard_tokens:
                self._close_shard()
                self._open()
            take = min(len(arr), self.shard_tokens - self._in_shard)
            self._file.write(arr[:take].tobytes())
            self._in_shard += take
            self.n_tokens += take
            arr = arr[take:]

    def close(self) -> list[Path]:
        if self._file is None and not self.paths:
            self._open()  # an empty split still gets one (empty) shard
        self._close_shard()
        return self.paths


def read_header(path: str | Path) -> int:
    """Validate a shard's header against its size; returns its token count (one-line DataError)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"cannot read shard {path}: {e.strerror}") from None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: not a token shard ({size} bytes, shorter than the {HEADER_BYTES}-byte header)")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise DataError(f"{path}: not a token shard (magic {int(header[0])}, expected {MAGIC})")
    if header[1] != VERSION:
        raise DataError(f"{path}: unsupported shard version {int(header[1])} (this qat_lab reads {VERSION})")
    n = int(header[2])
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise DataError(f"{path}: header says {n} tokens ({HEADER_BYTES + 2 * n} bytes) but the file has {size} bytes")
    return n


def open_shard(path: str | Path) -> np.ndarray:
    """The tokens of one shard as a read-only uint16 memmap (validated header)."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))


def find_shards(root: str | Path, pattern: str) -> list[Path]:
    """Files under `root` matching `pattern`, sorted by path (DataError when there are none)."""
    root = Path(root).expanduser()
    files = sorted(f for f in root.glob(pattern) if f.is_file())
    if not files:
        raise DataError(f"no token shards match {root / pattern}")
    return files


class ShardSet:
    """The concatenated tokens of several shards, sliceable like a 1-D uint16 array.

    `vocab_limit` (optional): every token read must be below it, else a DataError names the
    shard (a byte model fed GPT-2 shards fails on the first batch, not with a CUDA assert).
    """

    def __init__(self, paths: Iterable[str | Path], vocab_limit: int | None = None):
        self.paths = [Path(p) for p in paths]
        self.lengths = np.array([read_header(p) for p in self.paths], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.vocab_limit = vocab_limit
        self._open: OrderedDict[int, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def dtype(self) -> np.dtype:
        return TOKEN_DTYPE

    def _shard(self, i: int) -> np.ndarray:
        if i in self._open:
            self._open.move_to_end(i)
            return self._open[i]
        arr = open_shard(self.paths[i])
        self._open[i] = arr
        if len(self._open) > MAX_OPEN:
            self._open.popitem(last=False)
        return arr

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ShardSet supports only contiguous slices, e.g. tokens[a:b]")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.zeros(0, dtype=TOKEN_DTYPE)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        parts, pos, i = [], start, first
        while pos < stop:
            lo = pos - int(self.offsets[i])
            hi = min(stop, int(self.offsets[i + 1])) - int(self.offsets[i])
            if hi > lo:
                part = np.array(self._shard(i)[lo:hi])
                if self.vocab_limit is not None and part.size and int(part.max()) >= self.vocab_limit:
                    raise DataError(f"{self.paths[i]}: token {int(part.max())} is outside the vocabulary "
                                    f"(size {self.vocab_limit}); set data.tokenizer / data.vocab_size to match the shards")
                parts.append(part)
                pos += hi - lo
            i += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def chunks(self, limit: int | None = None, size: int = 1 << 22) -> Iterator[np.ndarray]:
        """The first `limit` tokens (all if None) in pieces of at most `size`."""
        end = len(self) if limit is None else min(limit, len(self))
        for a in range(0, end, size):
            yield self[a : min(a + size, end)]

    def close(self) -> None:
        self._open.clear()

    def __getstate__(self) -> dict:
        # DataLoader workers get the file list, not copies of the mapped pages.
        return {**self.__dict__, "_open": OrderedDict()}


def sampled_fingerprint(paths: Iterable[str | Path], root: str | Path, extra: bytes = b"") -> str:
    """SHA-256 over (relative path, size, first and last MiB) of every file, in order.

    Cheap for datasets of many GB (it reads at most 2 MiB a file); it catches a different file
    set, a different length and a rewrite of the header or either end, not an edit in the middle
    of a large file. For shards the first MiB contains the header (and so the token count).
    """
    h = hashlib.sha256(extra)
    root = Path(root)
    for p in paths:
        p = Path(p)
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = p.name
        size = p.stat().st_size
        h.update(rel.encode() + b"\0" + size.to_bytes(8, "little"))
        with open(p, "rb") as f:
            h.update(f.read(FINGERPRINT_SAMPLE))
            if size > FINGERPRINT_SAMPLE:
                f.seek(max(FINGERPRINT_SAMPLE, size - FINGERPRINT_SAMPLE))
                h.update(f.read())
    return h.hexdigest()
