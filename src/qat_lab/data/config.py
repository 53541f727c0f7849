"""Which text a run trains on and how it is cut into batches (the `data` config group; docs/data.md).

No torch and no I/O beyond checking that a path exists: the data module (datamodule.py) and the
preflight's data check (check.py) do the reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qat_lab import validation as v
from qat_lab.errors import ConfigError, DataError

DEFAULT_BPE_VOCAB = 1024


@dataclass
class DataConfig:
    """Which text to train on and how it is cut into batches (docs/data.md)."""

    corpus: Literal["shakespeare", "python_stdlib", "text", "hf", "shards"] = "shakespeare"
    """'shakespeare' (embedded, ~5 MB of plays), 'python_stdlib' (~13 MB of .py files), 'text', 'hf' or 'shards'."""
    path: str | None = None
    """For corpus='text'/'hf': a file, or a folder searched with `glob`; for 'shards': the shard folder."""
    glob: str = "**/*.txt"
    """Files taken from a `path` folder (sorted by path, so the order is reproducible)."""
    tokenizer: Literal["bytes", "bpe", "file", "none"] = "bytes"
    """'bytes' (vocab 256), 'bpe' (byte-level BPE trained on the train split), 'file' (`tokenizer_file`) or 'none' (shards only; no bpb)."""
    vocab_size: int | None = None
    """Model vocabulary: the BPE size to train (default 1024); else None = the tokenizer's, or larger to pad; required for 'none'."""
    tokenizer_file: str | None = None
    """For tokenizer='file': a `tokenizers` JSON; for corpus='shards' it defaults to <path>/tokenizer.json."""
    tokenizer_train_bytes: int = 100_000_000
    """A BPE is trained on at most this many bytes from the start of the train split."""
    train_glob: str = "*_train_*.bin"
    """For corpus='shards': the train shards under `path` (sorted; modded-nanogpt / parameter-golf names)."""
    val_glob: str = "*_val_*.bin"
    """For corpus='shards': the val shards under `path` (sorted)."""
    hf_format: Literal["text", "json", "parquet"] | None = None
    """For corpus='hf': the `datasets` builder 'text', 'json' or 'parquet'; None = from the file suffixes."""
    text_field: str = "text"
    """For corpus='hf' with json/parquet rows: the column holding the text."""
    cache_dir: str | None = None
    """Where trained tokenizers and tokenised corpora are cached; None = $QAT_LAB_CACHE or ~/.cache/qat_lab."""
    seq_len: int = 128
    """Tokens per training sequence (the model sees seq_len tokens, predicts the next one each)."""
    batch_size: int = 32
    """Sequences per optimiser step."""
    val_fraction: float = 0.05
    """The last fraction of the token stream is held out for validation (deterministic split; not for shards)."""
    val_tokens: int = 32768
    """Validation tokens used for the final evaluation (fixed, contiguous windows)."""

    def __post_init__(self) -> None:
        v.check_choices(self, "data")
        if self.corpus in ("text", "hf", "shards"):
            name = "data=" + self.corpus
            if not self.path:
                raise ConfigError(f"{name} needs path=<{'shard folder' if self.corpus == 'shards' else 'file or folder'}>"
                                  + (" (e.g. qatlab data=text path=notes.txt)" if self.corpus == "text" else ""))
            if not Path(self.path).expanduser().exists():
                raise DataError(f"path={self.path} does not exist")
            if self.corpus == "shards" and not Path(self.path).expanduser().is_dir():
                raise DataError(f"path={self.path} is not a folder of token shards")
        for key in ("seq_len", "batch_size", "val_tokens", "tokenizer_train_bytes"):
            setattr(self, key, v.integer(f"data.{key}", getattr(self, key), 1))
        v.in_range("data.val_fraction", self.val_fraction, 0.0, 1.0, low_open=True, high_open=True)
        if self.vocab_size is not None:
            self.vocab_size = v.integer("data.vocab_size", self.vocab_size, 1)
        vocab = self.vocab_size
        if self.tokenizer == "bpe":
            if self.corpus == "shards":
                raise ConfigError("data.tokenizer=bpe trains on text, but shards are already tokenised: use "
                                  "data.tokenizer=file (their tokenizer.json), bytes, or none with data.vocab_size")
            self.vocab_size = DEFAULT_BPE_VOCAB if vocab is None else vocab
            if not 257 <= self.vocab_size <= 65536:
                raise ConfigError(f"data.vocab_size={self.vocab_size} must be in [257, 65536] for a byte-level BPE")
        elif self.tokenizer == "bytes" and vocab is not None and vocab < 256:
            raise ConfigError(f"data.vocab_size={vocab} is smaller than the byte tokenizer's 256")
        elif self.tokenizer == "none":
            if self.corpus != "shards":
                raise ConfigError("data.tokenizer=none is only for data=shards (token ids without a tokenizer)")
            if vocab is None:
                raise ConfigError("data.tokenizer=none needs data.vocab_size=<N> (the shards' vocabulary)")
        elif self.tokenizer == "file":
            if not self.tokenizer_file and self.corpus != "shards":
                raise ConfigError("data.tokenizer=file needs data.tokenizer_file=<tokenizer.json>")
            if self.tokenizer_file and not Path(self.tokenizer_file).expanduser().is_file():
                raise DataError(f"data.tokenizer_file={self.tokenizer_file} does not exist")
