"""LightningDataModule: a deterministic train/val split and seeded random training windows.

The corpus is joined into one token stream; the last `val_fraction` of it is the validation split
(for Shakespeare: the last plays in path order). Training batch i is drawn from a generator
seeded by (seed, i), so batch contents depend only on the seed and the step: a resumed or
re-run job sees exactly the same data.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qat_lab.config import DataConfig
from qat_lab.data.corpora import Corpus, load_corpus
from qat_lab.data.tokenizer import ByteTokenizer
from qat_lab.errors import DataError


class RandomWindows(Dataset):
    """Item i is a whole batch (x, y) of random windows; one item per optimiser step."""

    def __init__(self, tokens: np.ndarray, steps: int, batch_size: int, seq_len: int, seed: int):
        self.tokens, self.steps, self.batch_size, self.seq_len, self.seed = tokens, steps, batch_size, seq_len, seed

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        starts = rng.integers(0, len(self.tokens) - self.seq_len - 1, size=self.batch_size)
        windows = np.stack([self.tokens[s : s + self.seq_len + 1] for s in starts]).astype(np.int64)
        w = torch.from_numpy(windows)
        return w[:, :-1], w[:, 1:]


def val_batches(tokens: np.ndarray, seq_len: int, batch_size: int, max_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Contiguous, non-overlapping windows from the start of the val split: the same for every run."""
    n_windows = min((len(tokens) - 1) // seq_len, max(1, max_tokens // seq_len))
    usable = tokens[: n_windows * seq_len + 1].astype(np.int64)
    x = torch.from_numpy(usable[:-1].reshape(n_windows, seq_len).copy())
    y = torch.from_numpy(usable[1:].reshape(n_windows, seq_len).copy())
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n_windows, batch_size)]


def unigram_bits_per_token(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (bits/token) of the val split under the train split's unigram frequencies.

    The baseline any model must beat; add-one smoothing keeps unseen tokens finite.
    """
    counts = np.bincount(train, minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    return float(-logp[val].mean())


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, steps: int, seed: int):
        super().__init__()
        self.cfg, self.steps, self.seed = cfg, steps, seed
        self.tokenizer = ByteTokenizer()
        self.corpus: Corpus | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.corpus is not None:
            return
        cfg = self.cfg
        self.corpus = load_corpus(cfg.corpus, cfg.path, cfg.glob)
        tokens = self.tokenizer.encode(self.corpus.joined())
        n_val = int(math.ceil(len(tokens) * cfg.val_fraction))
        self.train_tokens, self.val_tokens = tokens[:-n_val], tokens[-n_val:]
        for split, t in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(t) < cfg.seq_len + 2:
                raise DataError(f"corpus {self.corpus.name} has only {len(t)} {split} tokens; need more than data.seq_len={cfg.seq_len}")
        self.unigram_bpt = unigram_bits_per_token(self.train_tokens, self.val_tokens, self.tokenizer.vocab_size)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def bits_per_byte(self, loss_nats: float) -> float:
        """val_bpb = loss / ln 2 * tokens / bytes (tokens == bytes for the byte tokenizer)."""
        return loss_nats / math.log(2) / self.tokenizer.bytes_per_token(self.val_tokens)

    def train_dataloader(self) -> DataLoader:
        ds = RandomWindows(self.train_tokens, self.steps, self.cfg.batch_size, self.cfg.seq_len, self.seed)
        # batch_size=None: each dataset item already is a batch. No workers: slicing is microseconds.
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=0)

    def eval_batches(self, max_tokens: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return val_batches(self.val_tokens, self.cfg.seq_len, self.cfg.batch_size, max_tokens or self.cfg.val_tokens)

    def describe(self) -> dict:
        """Corpus facts for the run record."""
        c = self.corpus
        return {
            "corpus": c.name, "root": c.root, "fingerprint": c.fingerprint, "n_documents": len(c.documents),
            "n_bytes": c.n_bytes, "tokenizer": self.tokenizer.name, "vocab_size": self.vocab_size,
            "train_tokens": int(len(self.train_tokens)), "val_tokens": int(len(self.val_tokens)),
            "val_fraction": self.cfg.val_fraction, "unigram_val_bpb": self.unigram_bpt,
        }
