"""Corpora, the byte tokenizer and the LightningDataModule."""

from qat_lab.data.corpora import Corpus, load_corpus
from qat_lab.data.datamodule import LMDataModule
from qat_lab.data.tokenizer import ByteTokenizer

__all__ = ["Corpus", "load_corpus", "LMDataModule", "ByteTokenizer"]
