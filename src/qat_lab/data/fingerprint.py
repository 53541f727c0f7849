"""What identifies a corpus: a fingerprint of its content, never its path (the run record keeps
it, and records/identity.py pairs runs by it; the CLI warns by it about jobs that would train the
same model). One function per kind of corpus, and corpus_fingerprint for a data config:

    text corpora (shakespeare, python_stdlib, text)  SHA-256 of every document (corpora.Corpus)
    hf files                                          sampled: paths, sizes, first and last MiB,
                                                      plus the format and text field read
    token shards                                      sampled: the train and val shards
"""

from __future__ import annotations

import json
from pathlib import Path

from qat_lab.data.config import DataConfig
from qat_lab.data.shards import find_shards, sampled_fingerprint


def hf_fingerprint(root: Path, files: list[Path], fmt: str, text_field: str) -> str:
    facts = json.dumps({"format": fmt, "text_field": text_field}, sort_keys=True).encode()
    return sampled_fingerprint(files, root, extra=facts)


def shards_fingerprint(root: Path, train_files: list[Path], val_files: list[Path]) -> str:
    return sampled_fingerprint([*train_files, *val_files], root)


def corpus_fingerprint(cfg: DataConfig) -> str:
    """The fingerprint a job on `cfg` will record for its corpus (reads a text corpus whole, only
    the ends of HF files and shards). Raises DataError where the data cannot be read."""
    if cfg.corpus == "shards":
        root = Path(cfg.path).expanduser()
        return shards_fingerprint(root, find_shards(root, cfg.train_glob), find_shards(root, cfg.val_glob))
    if cfg.corpus == "hf":
        from qat_lab.data import hf

        root, files = hf.find_files(cfg.path, cfg.glob)
        return hf_fingerprint(root, files, hf.infer_format(files, cfg.hf_format), cfg.text_field)
    from qat_lab.data.corpora import load_corpus

    return load_corpus(cfg.corpus, cfg.path, cfg.glob).fingerprint
