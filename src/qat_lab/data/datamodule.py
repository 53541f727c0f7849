"""LightningDataModule: a deterministic train/val split and seeded random training windows.

The corpus is joined into one token stream; the last `val_fraction` of it is the validation split
(for Shakespeare: the last plays in path order). Training batch i is drawn from a generator
seeded by (seed, i), so batch contents depend only on the seed and the step: a resumed or
re-run job sees exactly the same data.

Three ways in (docs/data.md): the embedded/text corpora with the byte tokenizer are read into
memory as before; any other tokenizer, and `hf` corpora, go through `prepare` (split, tokenizer,
token shards cached on disk); `shards` datasets are read where they lie. Shards are memory-mapped
(`ShardSet`), so a corpus is never loaded whole. val_bpb stays exact: the UTF-8 bytes of the
evaluated targets are counted with the tokenizer's per-token byte table; without one it is None.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from qat_lab.cache import cache_root
from qat_lab.data.config import DataConfig
from qat_lab.data.corpora import Corpus, load_corpus
from qat_lab.data.fingerprint import shards_fingerprint
from qat_lab.data.shards import ShardSet, find_shards
from qat_lab.data.tokenizer import ByteTokenizer
from qat_lab.errors import DataError

CALIBRATION_STREAM = 1_000_003
"""The `rank` slot of RandomWindows' seed used for calibration batches (real ranks are small)."""
UNIGRAM_TOKENS = 1 << 26
"""The unigram baseline of a tokenised corpus counts at most this many train and val tokens."""


class RandomWindows(Dataset):
    """Item i is a whole batch (x, y) of random windows; one item per optimiser step.

    Under data parallelism every rank reads its own item i (seeded by (seed, i, rank)), so a step
    sees devices x batch_size sequences; rank 0 draws exactly what a single-device run draws.
    """

    def __init__(self, tokens: np.ndarray, steps: int, batch_size: int, seq_len: int, seed: int, rank: int = 0):
        self.tokens, self.steps, self.batch_size, self.seq_len, self.seed = tokens, steps, batch_size, seq_len, seed
        self.rank = rank

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i] if self.rank == 0 else [self.seed, i, self.rank])
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


def _chunks(tokens, limit: int, size: int = 1 << 22):
    if isinstance(tokens, ShardSet):
        yield from tokens.chunks(limit, size)
    else:
        for a in range(0, min(limit, len(tokens)), size):
            yield np.asarray(tokens[a : min(a + size, limit, len(tokens))])


def unigram_val_bpb(train, val, vocab_size: int, byte_lengths: np.ndarray | None,
                    limit: int = UNIGRAM_TOKENS) -> float | None:
    """The unigram baseline in bits per byte: val bits under the train counts / the val bytes.

    Counts the first `limit` tokens of each split (streamed); None without a byte table.
    """
    if byte_lengths is None:
        return None
    counts = np.zeros(vocab_size, dtype=np.float64)
    for chunk in _chunks(train, limit):
        counts += np.bincount(chunk, minlength=vocab_size)
    counts += 1.0
    logp = np.log2(counts / counts.sum())
    bits = n_bytes = 0.0
    for chunk in _chunks(val, limit):
        bits -= float(logp[chunk].sum())
        n_bytes += float(byte_lengths[chunk].sum())
    return bits / n_bytes if n_bytes else None


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, steps: int, seed: int):
        super().__init__()
        self.cfg, self.steps, self.seed = cfg, steps, seed
        self.tokenizer = ByteTokenizer()
        """ByteTokenizer, an HFTokenizer (bpe/file), or None for tokenizer=none."""
        self.corpus: Corpus | None = None
        """The in-memory corpus (embedded/text corpora with the byte tokenizer); None otherwise."""
        self.start_step = 0
        """First step to train (non-zero when resuming from a checkpoint)."""
        self.byte_lengths: np.ndarray | None = ByteTokenizer.byte_lengths
        """UTF-8 bytes per token id (None: bits-per-byte unavailable)."""
        self.facts: dict = {}
        self.token_cache = None
        self._vocab: int | None = None
        self._eval_counts_cache: dict[int, tuple[int, int]] = {}
        self._ready = False

    def setup(self, stage: str | None = None) -> None:
        if self._ready:
            return
        cfg = self.cfg
        if cfg.corpus == "shards":
            self._setup_shards()
        elif cfg.corpus != "hf" and cfg.tokenizer == "bytes":
            self._setup_bytes()
        else:
            self._setup_tokenised()
        for split, t in (("train", self.train_tokens), ("val", self.val_tokens)):
            if len(t) < cfg.seq_len + 2:
                raise DataError(f"corpus {self.facts['corpus']} has only {len(t)} {split} tokens; need more than data.seq_len={cfg.seq_len}")
        if self.corpus is not None:  # the original byte path: the whole split, exactly
            self.unigram_bpt = unigram_bits_per_token(self.train_tokens, self.val_tokens, self.tokenizer.vocab_size)
        else:
            self.unigram_bpt = unigram_val_bpb(self.train_tokens, self.val_tokens, self.vocab_size, self.byte_lengths)
        self._ready = True

    def _setup_bytes(self) -> None:
        cfg = self.cfg
        self.corpus = c = load_corpus(cfg.corpus, cfg.path, cfg.glob)
        tokens = self.tokenizer.encode(c.joined())
        n_val = int(math.ceil(len(tokens) * cfg.val_fraction))
        self.train_tokens, self.val_tokens = tokens[:-n_val], tokens[-n_val:]
        self._vocab = self._model_vocab()
        self.facts = {"corpus": c.name, "root": c.root, "fingerprint": c.fingerprint, "n_documents": len(c.documents),
                      "n_bytes": c.n_bytes, "fingerprint_kind": "sha256-content", "val_fraction": cfg.val_fraction}

    def _setup_tokenised(self) -> None:
        from qat_lab.data import prepare

        cfg = self.cfg
        cache = cache_root(cfg.cache_dir)
        source = prepare.source_for(cfg, cache)
        self.tokenizer = prepare.make_tokenizer(cfg, source, cache)
        directory, meta = prepare.cached_token_shards(source, self.tokenizer, cfg.val_fraction, cache)
        self._vocab = self._model_vocab()
        self.train_tokens = ShardSet([directory / n for n in meta["train"]], self._vocab)
        self.val_tokens = ShardSet([directory / n for n in meta["val"]], self._vocab)
        self.byte_lengths = self.tokenizer.byte_lengths
        self.token_cache = str(directory)
        self.facts = {"corpus": source.name, "root": source.root, "fingerprint": source.fingerprint,
                      "n_documents": source.n_documents, "n_bytes": source.n_document_bytes,
                      "fingerprint_kind": source.fingerprint_kind, "val_fraction": cfg.val_fraction,
                      "train_bytes": meta["train_bytes"], "val_bytes": meta["val_bytes"]}

    def _setup_shards(self) -> None:
        from qat_lab.data import prepare

        cfg = self.cfg
        root = Path(cfg.path).expanduser()
        train_files, val_files = find_shards(root, cfg.train_glob), find_shards(root, cfg.val_glob)
        both = sorted(set(train_files) & set(val_files))
        if both:
            raise DataError(f"{both[0]} matches both data.train_glob={cfg.train_glob} and data.val_glob={cfg.val_glob}")
        self.tokenizer = prepare.make_tokenizer(cfg, None, cache_root(cfg.cache_dir))
        self._vocab = self._model_vocab()
        self.train_tokens, self.val_tokens = ShardSet(train_files, self._vocab), ShardSet(val_files, self._vocab)
        self.byte_lengths = None if self.tokenizer is None else self.tokenizer.byte_lengths
        self.facts = {"corpus": f"shards:{root.resolve().name}", "root": str(root.resolve()),
                      "fingerprint": shards_fingerprint(root, train_files, val_files),
                      "n_documents": None, "n_bytes": None, "fingerprint_kind": "sha256-sampled", "val_fraction": None,
                      "train_shards": len(train_files), "val_shards": len(val_files)}

    def _model_vocab(self) -> int:
        """data.vocab_size if set (a BPE's requested size, or padding), else the tokenizer's."""
        cfg, own = self.cfg, (self.tokenizer.vocab_size if self.tokenizer is not None else None)
        if cfg.vocab_size is None:
            return own
        if own is not None and cfg.tokenizer != "bpe" and cfg.vocab_size < own:
            raise DataError(f"data.vocab_size={cfg.vocab_size} is smaller than tokenizer {self.tokenizer.name}'s {own} tokens")
        return int(cfg.vocab_size)

    @property
    def vocab_size(self) -> int:
        """The model's vocabulary (the embedding and head size)."""
        if self._vocab is not None:
            return self._vocab
        return self.cfg.vocab_size or self.tokenizer.vocab_size

    @property
    def bpb_exact(self) -> bool:
        """True when val_bpb can be computed exactly (the tokenizer gives every token's bytes)."""
        return self.byte_lengths is not None

    def target_bytes(self, targets) -> int:
        """Exact UTF-8 bytes of the text that these target token ids decode to."""
        ids = np.asarray(targets).reshape(-1).astype(np.int64)
        if ids.size and int(ids.max()) >= len(self.byte_lengths):
            raise DataError(f"token {int(ids.max())} is not in tokenizer {self.tokenizer.name} ({len(self.byte_lengths)} tokens)")
        return int(self.byte_lengths[ids].sum())

    def _eval_counts(self, max_tokens: int) -> tuple[int, int]:
        """(targets, their UTF-8 bytes) of `eval_batches(max_tokens)`, computed without building it."""
        if max_tokens not in self._eval_counts_cache:
            seq = self.cfg.seq_len
            n_windows = min((len(self.val_tokens) - 1) // seq, max(1, max_tokens // seq))
            targets = self.val_tokens[1 : n_windows * seq + 1]
            self._eval_counts_cache[max_tokens] = (len(targets), self.target_bytes(targets))
        return self._eval_counts_cache[max_tokens]

    def bits_per_byte(self, loss_nats: float) -> float | None:
        """val_bpb of the final evaluation (`eval_batches()`): loss / ln 2 * targets / their bytes.

        Exact: the bytes are counted over exactly those targets (targets == bytes for the byte
        tokenizer). None when the tokenizer is unknown. For another set of windows use
        `bits_per_byte_for(batches)`.
        """
        if self.byte_lengths is None:
            return None
        n_targets, n_bytes = self._eval_counts(self.cfg.val_tokens)
        return loss_nats / math.log(2) / (n_bytes / n_targets)

    def bits_per_byte_for(self, batches):
        """A loss -> bpb function that is exact for these (x, y) batches (None without a byte table)."""
        if self.byte_lengths is None:
            return lambda loss_nats: None
        n_targets = sum(int(y.numel()) for _, y in batches)
        n_bytes = sum(self.target_bytes(y.numpy()) for _, y in batches)
        return lambda loss_nats: loss_nats / math.log(2) / (n_bytes / n_targets)

    def train_dataloader(self) -> DataLoader:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        ds = RandomWindows(self.train_tokens, self.steps, self.cfg.batch_size, self.cfg.seq_len, self.seed, rank)
        if self.start_step:  # resuming: batch t depends only on (seed, t), so skip the done ones
            ds = Subset(ds, range(self.start_step, self.steps))
        # batch_size=None: each dataset item already is a batch. No workers: slicing is microseconds.
        return DataLoader(ds, batch_size=None, shuffle=False, num_workers=0)

    def calibration_batches(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """n batches of random training-split windows for post-training calibration (GPTQ's
        Hessians), drawn from their own seeded stream: never batches the run trained on at a
        given step, and the same for every run of a seed."""
        windows = RandomWindows(self.train_tokens, n, self.cfg.batch_size, self.cfg.seq_len, self.seed,
                                rank=CALIBRATION_STREAM)
        return [windows[i] for i in range(n)]

    def eval_batches(self, max_tokens: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return val_batches(self.val_tokens, self.cfg.seq_len, self.cfg.batch_size, max_tokens or self.cfg.val_tokens)

    def describe(self) -> dict:
        """Corpus and tokenizer facts for the run record (docs/data.md)."""
        tok = self.tokenizer
        n_eval, eval_bytes = self._eval_counts(self.cfg.val_tokens) if self.bpb_exact else (None, None)
        f = self.facts
        return {
            "corpus": f["corpus"], "root": f["root"], "fingerprint": f["fingerprint"], "n_documents": f["n_documents"],
            "n_bytes": f["n_bytes"], "tokenizer": tok.name if tok is not None else "none", "vocab_size": self.vocab_size,
            "train_tokens": int(len(self.train_tokens)), "val_tokens": int(len(self.val_tokens)),
            "val_fraction": f["val_fraction"], "unigram_val_bpb": self.unigram_bpt,
            "fingerprint_kind": f["fingerprint_kind"],
            "tokenizer_vocab_size": tok.vocab_size if tok is not None else None,
            "tokenizer_sha256": getattr(tok, "sha256", None), "tokenizer_path": getattr(tok, "path", None),
            "bpb_exact": self.bpb_exact, "val_eval_tokens": n_eval, "val_eval_bytes": eval_bytes,
            "token_cache": self.token_cache,
            **{k: f[k] for k in ("train_bytes", "val_bytes", "train_shards", "val_shards") if k in f},
        }
