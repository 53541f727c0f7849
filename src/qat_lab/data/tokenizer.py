"""Byte-level tokenizer: token = UTF-8 byte. Vocab 256, so bits-per-byte needs no conversion.

Byte-level BPE tokenizers (trained locally or loaded from a file) live in `qat_lab.data.bpe`;
both kinds expose `name`, `vocab_size`, `sha256`, `byte_lengths` (UTF-8 bytes per token id, the
table that keeps bits-per-byte exact), `encode` and `decode_bytes`.
"""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    vocab_size = 256
    name = "bytes"
    sha256 = None
    path = None
    byte_lengths = np.ones(256, dtype=np.int64)
    """Every token is one byte."""
    byte_lengths.flags.writeable = False

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, tokens) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def decode_bytes(self, tokens) -> bytes:
        return bytes(int(t) for t in tokens)
