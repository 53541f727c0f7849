"""Byte-level tokenizer: token = UTF-8 byte. Vocab 256, so bits-per-byte needs no conversion."""

from __future__ import annotations

import numpy as np


class ByteTokenizer:
    vocab_size = 256
    name = "bytes"

    def encode(self, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=np.uint8)

    def decode(self, tokens) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def bytes_per_token(self, tokens: np.ndarray) -> float:
        """Average UTF-8 bytes per token in `tokens` (exactly 1 for bytes)."""
        return 1.0
