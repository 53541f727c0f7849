"""Byte-level BPE tokenizers (the `tokenizers` package): trained locally, or loaded from a file.

Byte-level means every token stands for a fixed byte string (GPT-2's byte -> printable-char map),
so any byte stream round-trips exactly and the UTF-8 bytes of any token sequence are the sum of a
per-token length table: that is what keeps bits-per-byte exact (see docs/data.md).

Encoding is streamed and independent of how the input is delivered: the byte stream is cut into
blocks after a newline (about `BLOCK` bytes each) and each block into chunks of about `CHUNK`
characters (again after a newline), which are encoded in batches. Bytes that are not valid UTF-8
(a Latin-1 file in a corpus, say) cannot go through the `tokenizers` API as text; they are encoded
as the single-byte tokens that every byte-level vocabulary contains, so nothing is lost.

Training uses the same chunks (invalid bytes left out) and is deterministic; a trained tokenizer
is cached on disk under a key of everything that determines it (see `load_or_train`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qat_lab.atomic import atomic_write
from qat_lab.errors import DataError

BLOCK = 1 << 20
"""Bytes buffered before a block is cut (after its last newline) and encoded."""
CHUNK = 1 << 16
"""Characters per encode/train unit (cut after the next newline)."""
RECIPE = "bpe-bytelevel-v1"
"""Names the training recipe below; part of the cache key (change it when the recipe changes)."""
_INVALID = re.compile("([\udc80-\udcff]+)")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


@functools.cache
def unicode_to_bytes() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _boundary_before(data: bytes | bytearray, i: int) -> int:
    """A cut position <= i that does not split a valid UTF-8 character (i itself if none is near)."""
    j = i
    while j > 0 and j > i - 3 and (data[j] & 0xC0) == 0x80:
        j -= 1
    return j if j > 0 and (data[j] & 0xC0) != 0x80 else i


def blocks(pieces: Iterable[bytes], block: int = BLOCK) -> Iterator[bytes]:
    """Re-cut a byte stream into blocks of at most `block` bytes, each ending after its last newline.

    A cut depends only on the stream's bytes, never on how they were split into `pieces`. A block
    without a newline is cut before a character start.
    """
    buf = bytearray()
    for piece in pieces:
        buf += piece
        while len(buf) >= block:
            cut = buf.rfind(b"\n", 0, block) + 1
            if cut <= 0:
                cut = _boundary_before(buf, block - 1)
            yield bytes(buf[:cut])
            del buf[:cut]
    if buf:
        yield bytes(buf)


def _text_chunks(text: str, size: int = CHUNK) -> list[str]:
    out, i = [], 0
    while i < len(text):
        j = text.find("\n", i + size)
        j = len(text) if j < 0 else j + 1
        out.append(text[i:j])
        i = j
    return out


def segments(block: bytes) -> Iterator[str | bytes]:
    """A block as text chunks (str) and runs of bytes that are not valid UTF-8 (bytes)."""
    text = block.decode("utf-8", errors="surrogateescape")
    for k, part in enumerate(_INVALID.split(text)):
        if not part:
            continue
        if k % 2:  # a run of undecodable bytes, each escaped as U+DC80 + byte
            yield part.encode("utf-8", errors="surrogateescape")
        else:
            yield from _text_chunks(part)


def training_texts(pieces: Iterable[bytes]) -> Iterator[str]:
    for b in blocks(pieces):
        for seg in segments(b):
            if isinstance(seg, str):
                yield seg


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the interface the data module needs.

    `byte_lengths[id]` is the number of UTF-8 bytes token `id` decodes to (added/special tokens
    count 0); it is None for tokenizers that are not byte-level BPE, whose tokens have no fixed
    byte string (bits-per-byte is then reported as unavailable).
    """

    def __init__(self, tokenizer, name: str, path: str | None = None):
        self.tk, self.name, self.path = tokenizer, name, path
        self.json = tokenizer.to_str()
        self.sha256 = hashlib.sha256(self.json.encode()).hexdigest()
        self.vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self.added_ids = np.array(sorted(int(i) for i in tokenizer.get_added_tokens_decoder()), dtype=np.int64)
        self.token_bytes = self._token_bytes()
        self.byte_lengths = (None if self.token_bytes is None else
                             np.array([len(b) for b in self.token_bytes], dtype=np.int64))
        self._byte_ids = None
        self._checked = False

    # --- construction --------------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, name: str | None = None) -> "HFTokenizer":
        from tokenizers import Tokenizer

        path = Path(path).expanduser()
        try:
            tk = Tokenizer.from_file(str(path))
        except FileNotFoundError:
            raise DataError(f"tokenizer file {path} does not exist") from None
        except Exception as e:  # tokenizers raises plain Exceptions for bad JSON
            raise DataError(f"{path}: not a tokenizers JSON file ({str(e).splitlines()[0]})") from None
        return cls(tk, name or f"file:{path.name}", str(path.resolve()))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "HFTokenizer":
        """Train a byte-level BPE (no normalizer, no special tokens) on `texts`."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False, special_tokens=[],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk, f"bpe-{vocab_size}")

    def save(self, path: str | Path) -> Path:
        """Write the tokenizer JSON atomically (readable by others: it is a shared cache)."""
        return atomic_write(path, self.json)

    # --- byte-level facts ----------------------------------------------------------------------

    def _token_bytes(self) -> list[bytes] | None:
        spec = json.loads(self.json)
        if spec.get("normalizer") is not None or "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")):
            return None
        u2b = unicode_to_bytes()
        added = set(self.added_ids.tolist())
        out: list[bytes] = [b""] * self.vocab_size
        for token, i in self.tk.get_vocab(with_added_tokens=True).items():
            if i in added:
                continue
            if any(c not in u2b for c in token):
                return None
            out[i] = bytes(u2b[c] for c in token)
        return out

    @property
    def byte_level(self) -> bool:
        return self.token_bytes is not None

    def _single_byte_ids(self) -> np.ndarray:
        if self._byte_ids is None:
            vocab = self.tk.get_vocab(with_added_tokens=False)
            b2u = bytes_to_unicode()
            missing = [b for b in range(256) if b2u[b] not in vocab]
            if missing:
                raise DataError(f"tokenizer {self.name} has no token for byte {missing[0]}; it cannot encode arbitrary bytes")
            self._byte_ids = np.array([vocab[b2u[b]] for b in range(256)], dtype=np.int64)
        return self._byte_ids

    # --- encode / decode -----------------------------------------------------------------------

    def encode_block(self, block: bytes) -> np.ndarray:
        parts: list[np.ndarray] = []
        texts: list[str] = []

        def flush() -> None:
            if texts:
                for enc in self.tk.encode_batch_fast(texts, add_special_tokens=False):
                    parts.append(np.asarray(enc.ids, dtype=np.int64))
                texts.clear()

        for seg in segments(block):
            if isinstance(seg, str):
                texts.append(seg)
            else:
                flush()
                parts.append(self._single_byte_ids()[np.frombuffer(seg, dtype=np.uint8)])
        flush()
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if self.added_ids.size and np.isin(ids, self.added_ids).any():
            special = self.tk.id_to_token(int(ids[np.isin(ids, self.added_ids)][0]))
            raise DataError(f"the text contains the special token {special!r} of tokenizer {self.name}; its bytes "
                            "would not be counted (remove it from the text or use a tokenizer without it)")
        return ids

    def _check_lossless(self) -> None:
        if not self.byte_level:
            raise DataError(f"tokenizer {self.name} is not a byte-level BPE: it cannot encode raw bytes losslessly")
        if not self._checked:
            probe = "a  b\n\tc é 日本 🙂 \r\n".encode()
            if self.decode_bytes(self.encode_block(probe)) != probe:
                raise DataError(f"tokenizer {self.name} does not round-trip text exactly (a prefix space or "
                                "normaliser?); it cannot encode a corpus for exact bits-per-byte")
            self._checked = True

    def encode_stream(self, pieces: Iterable[bytes]) -> Iterator[np.ndarray]:
        self._check_lossless()
        for b in blocks(pieces):
            yield self.encode_block(b)

    def encode(self, data: bytes) -> np.ndarray:
        """Token ids of a byte string (the whole string as one stream)."""
        parts = list(self.encode_stream([data]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def decode_bytes(self, ids) -> bytes:
        if self.token_bytes is None:
            raise DataError(f"tokenizer {self.name} is not byte-level: its tokens have no fixed bytes")
        return b"".join(self.token_bytes[int(i)] for i in ids)

    def decode(self, ids) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")


def cache_key(**facts) -> str:
    """A short SHA-256 of JSON-serialised facts (sorted keys)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:20]


def load_or_train(texts_factory, vocab_size: int, key_facts: dict, cache_dir: Path) -> tuple[HFTokenizer, Path]:
    """The cached tokenizer for `key_facts` + vocab_size + recipe, trained on `texts_factory()` if absent.

    Concurrent jobs may both train; each writes atomically, and training is deterministic.
    """
    import tokenizers

    key = cache_key(recipe=RECIPE, vocab_size=vocab_size, tokenizers=tokenizers.__version__, **key_facts)
    path = Path(cache_dir) / "tokenizers" / f"bpe{vocab_size}-{key}.json"
    if path.is_file():
        tok = HFTokenizer.from_file(path, name=f"bpe-{vocab_size}")
        if tok.byte_level:
            return tok, path
    tok = HFTokenizer.train(texts_factory(), vocab_size)
    tok.save(path)
    tok.path = str(path)
    return tok, path
