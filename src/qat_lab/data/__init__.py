"""Corpora, tokenizers (bytes, byte-level BPE), token shards and the LightningDataModule.

Names are imported on first use, so light tools (the preflight's data check, the shard writer)
need not import Lightning; `qat_lab.data.config` (DataConfig) imports nothing heavy.
"""

from importlib import import_module

_EXPORTS = {
    "DataConfig": "qat_lab.data.config", "Corpus": "qat_lab.data.corpora", "load_corpus": "qat_lab.data.corpora",
    "LMDataModule": "qat_lab.data.datamodule", "ByteTokenizer": "qat_lab.data.tokenizer",
    "HFTokenizer": "qat_lab.data.bpe", "ShardSet": "qat_lab.data.shards", "write_shard": "qat_lab.data.shards",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'qat_lab.data' has no attribute {name!r}")
