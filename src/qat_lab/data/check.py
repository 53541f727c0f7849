"""The preflight's data check: can this corpus feed a run at all? One line if not.

Run once per distinct data config of a sweep, before any job starts, so an empty file, a corpus
shorter than one sequence, a glob that matches nothing or a folder without shards stops the
command instead of failing every job. It reads what it can cheaply (text corpora's bytes, shard
headers, file lists) and no more: a BPE's token count is only known after tokenising, so there
the byte count (an upper bound on the tokens) is what is checked, and the job checks the rest.
Also reports how many tokens the split holds, so the CLI can say when a run will repeat it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from qat_lab.data.config import DataConfig
from qat_lab.errors import DataError


@dataclass
class DataFacts:
    """What the check learnt: the train/val split sizes in tokens (None where unknown before
    tokenising) and a readable name."""

    name: str
    train_tokens: int | None
    val_tokens: int | None
    exact: bool
    """True when the counts are the tokens the job will see; False when they are byte counts (a
    BPE or a file tokenizer: tokens <= bytes)."""


def _need(name: str, split: str, n: int, seq_len: int, unit: str = "tokens") -> None:
    if n < seq_len + 2:
        raise DataError(f"corpus {name} has only {n} {split} {unit}; need more than data.seq_len={seq_len} "
                        "(a longer corpus, a smaller data.seq_len or a larger data.val_fraction)")


def check_data(cfg: DataConfig) -> DataFacts:
    """Raise DataError (one line) if `cfg` cannot give one train and one val sequence."""
    if cfg.corpus == "shards":
        from qat_lab.data.shards import find_shards, read_header

        root = Path(cfg.path).expanduser()
        counts = {}
        for split, pattern in (("train", cfg.train_glob), ("val", cfg.val_glob)):
            counts[split] = sum(read_header(f) for f in find_shards(root, pattern))
        name = f"shards:{root.name}"
        for split, n in counts.items():
            _need(name, split, n, cfg.seq_len)
        return DataFacts(name, counts["train"], counts["val"], True)
    if cfg.corpus == "hf":
        from qat_lab.data import hf

        root, files = hf.find_files(cfg.path, cfg.glob)
        hf.infer_format(files, cfg.hf_format)
        if not any(f.stat().st_size for f in files):
            raise DataError(f"path={cfg.path}: every file matching {cfg.glob} is empty")
        return DataFacts(f"hf:{Path(cfg.path).name}", None, None, False)
    from qat_lab.data.corpora import DOCUMENT_SEPARATOR, load_corpus

    corpus = load_corpus(cfg.corpus, cfg.path, cfg.glob)
    n = corpus.n_bytes + len(DOCUMENT_SEPARATOR) * (len(corpus.documents) - 1)
    n_val = int(math.ceil(n * cfg.val_fraction))
    exact = cfg.tokenizer == "bytes"
    unit = "tokens" if exact else "bytes"
    _need(corpus.name, "train", n - n_val, cfg.seq_len, unit)
    _need(corpus.name, "val", n_val, cfg.seq_len, unit)
    return DataFacts(corpus.name, n - n_val, n_val, exact)
