"""Corpora and the data module (qat_lab.data)."""

from __future__ import annotations

import math
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from qat_lab.config import DataConfig
from qat_lab.data import load_corpus
from qat_lab.data.corpora import DOCUMENT_SEPARATOR
from qat_lab.data.datamodule import LMDataModule, RandomWindows, unigram_bits_per_token, val_batches
from qat_lab.errors import DataError

N_PLAYS = 38


def _one_line_data_error(**kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_corpus(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- corpora -----------------------------------------------------------------------------------

def test_shakespeare_has_the_plays():
    c = load_corpus("shakespeare")
    rels = [rel for rel, _ in c.documents]
    assert len(c.documents) == N_PLAYS
    assert rels == sorted(rels)
    assert len(set(rels)) == N_PLAYS
    for rel, content in c.documents:
        assert content, rel
        assert not rel.startswith("/") and rel.endswith(".md")
        assert (Path(c.root) / rel).read_bytes() == content
    assert c.n_bytes == sum(len(content) for _, content in c.documents) > 1_000_000
    assert len(c.joined()) == c.n_bytes + len(DOCUMENT_SEPARATOR) * (N_PLAYS - 1)


def test_shakespeare_fingerprint_is_stable():
    a, b = load_corpus("shakespeare"), load_corpus("shakespeare")
    assert a.fingerprint == b.fingerprint
    assert len(a.fingerprint) == 64 and int(a.fingerprint, 16) >= 0


def test_text_single_file(tmp_path: Path):
    f = tmp_path / "notes.txt"
    f.write_bytes(b"hello world\n")
    c = load_corpus("text", path=str(f))
    assert c.documents == [("notes.txt", b"hello world\n")]
    assert c.name == "text:notes.txt"


def test_text_folder_with_glob(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_bytes(b"bbb")
    (tmp_path / "sub" / "a.txt").write_bytes(b"aaa")
    (tmp_path / "x.md").write_bytes(b"markdown")
    (tmp_path / "empty.txt").write_bytes(b"")
    c = load_corpus("text", path=str(tmp_path))
    assert c.documents == [("b.txt", b"bbb"), ("sub/a.txt", b"aaa")]  # sorted, empty file dropped
    md = load_corpus("text", path=str(tmp_path), glob="*.md")
    assert md.documents == [("x.md", b"markdown")]


def test_text_fingerprint_changes_with_one_byte(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"abcdefgh")
    before = load_corpus("text", path=str(tmp_path)).fingerprint
    assert load_corpus("text", path=str(tmp_path)).fingerprint == before
    f.write_bytes(b"abcdefgX")  # same length, one byte differs
    assert load_corpus("text", path=str(tmp_path)).fingerprint != before


def test_text_fingerprint_changes_with_a_rename(tmp_path: Path):
    (tmp_path / "a.txt").write_bytes(b"first")
    (tmp_path / "b.txt").write_bytes(b"second")
    before = load_corpus("text", path=str(tmp_path))
    (tmp_path / "b.txt").rename(tmp_path / "c.txt")
    after = load_corpus("text", path=str(tmp_path))
    assert after.joined() == before.joined()  # same bytes in the same order...
    assert after.fingerprint != before.fingerprint  # ...but a different corpus


def test_text_missing_path(tmp_path: Path):
    missing = tmp_path / "nope.txt"
    assert str(missing) in _one_line_data_error(corpus="text", path=str(missing))
    _one_line_data_error(corpus="text", path=None)


def test_text_folder_without_matching_files(tmp_path: Path):
    (tmp_path / "x.md").write_text("not a txt")
    message = _one_line_data_error(corpus="text", path=str(tmp_path))
    assert "**/*.txt" in message and str(tmp_path) in message


def test_text_folder_with_only_empty_files(tmp_path: Path):
    (tmp_path / "a.txt").write_bytes(b"")
    _one_line_data_error(corpus="text", path=str(tmp_path))


def test_unknown_corpus():
    _one_line_data_error(corpus="wikipedia")


def test_python_stdlib_without_site_packages():
    c = load_corpus("python_stdlib")
    assert Path(c.root) == Path(sysconfig.get_paths()["stdlib"])
    rels = [rel for rel, _ in c.documents]
    assert len(rels) > 500
    assert rels == sorted(rels)
    assert all(rel.endswith(".py") for rel in rels)
    assert not [rel for rel in rels if {"site-packages", "dist-packages"} & set(rel.split("/"))]
    assert "os.py" in rels and "json/__init__.py" in rels


# --- windows and the split -----------------------------------------------------------------------

TOKENS = np.arange(5000, dtype=np.int64)  # every value unique: a window's first value is its start


def test_random_windows_shapes_and_shift():
    ds = RandomWindows(TOKENS, steps=7, batch_size=4, seq_len=16, seed=0)
    assert len(ds) == 7
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == y.shape == (4, 16)
        assert x.dtype == y.dtype == torch.int64
        for b in range(4):
            s = int(x[b, 0])
            assert 0 <= s and s + 17 <= len(TOKENS)
            assert torch.equal(x[b], torch.from_numpy(TOKENS[s : s + 16]))
            assert torch.equal(y[b], torch.from_numpy(TOKENS[s + 1 : s + 17]))


def test_random_windows_depend_only_on_seed_and_index():
    a = RandomWindows(TOKENS, steps=10, batch_size=8, seq_len=16, seed=3)
    b = RandomWindows(TOKENS, steps=10, batch_size=8, seq_len=16, seed=3)
    later_first = b[7]  # access order does not matter
    assert torch.equal(a[7][0], later_first[0])
    assert torch.equal(a[2][0], b[2][0]) and torch.equal(a[2][1], b[2][1])
    assert torch.equal(a[2][0], a[2][0])
    assert not torch.equal(a[2][0], a[3][0])  # another step, another batch
    other = RandomWindows(TOKENS, steps=10, batch_size=8, seq_len=16, seed=4)
    assert not torch.equal(a[2][0], other[2][0])  # another seed, another batch


def test_val_batches_are_contiguous_and_cover_the_request():
    batches = val_batches(TOKENS, seq_len=10, batch_size=4, max_tokens=95)
    assert [x.shape for x, _ in batches] == [(4, 10), (4, 10), (1, 10)]  # 9 windows of 10
    x = torch.cat([x for x, _ in batches]).flatten()
    y = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(x, torch.from_numpy(TOKENS[:90]))  # contiguous, non-overlapping, from the start
    assert torch.equal(y, torch.from_numpy(TOKENS[1:91]))
    again = val_batches(TOKENS, seq_len=10, batch_size=4, max_tokens=95)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))


def test_val_batches_capped_by_the_split():
    short = TOKENS[:55]
    batches = val_batches(short, seq_len=10, batch_size=8, max_tokens=10_000)
    x = torch.cat([x for x, _ in batches])
    assert x.shape == (5, 10)  # (55 - 1) // 10 windows: every target exists
    assert int(torch.cat([y for _, y in batches]).max()) == 50


def test_unigram_bits_per_token_by_hand():
    train = np.array([0, 0, 1], dtype=np.uint8)
    val = np.array([0, 2], dtype=np.uint8)
    # add-one counts: [3, 2, 1] of 6 -> p = [1/2, 1/3, 1/6]
    expected = -(math.log2(1 / 2) + math.log2(1 / 6)) / 2
    assert unigram_bits_per_token(train, val, vocab_size=3) == pytest.approx(expected, rel=1e-12)
    uniform = unigram_bits_per_token(np.array([], dtype=np.uint8), np.array([1, 5], dtype=np.uint8), 8)
    assert uniform == pytest.approx(3.0)


def _text_corpus(tmp_path: Path, n: int = 3000) -> Path:
    rng = np.random.default_rng(0)
    f = tmp_path / "corpus.txt"
    f.write_bytes(bytes(rng.integers(97, 123, size=n, dtype=np.uint8)))
    return f


def _module(path: Path, **overrides) -> LMDataModule:
    cfg = DataConfig(corpus="text", path=str(path), seq_len=16, batch_size=4, val_fraction=0.1, val_tokens=256)
    for k, v in overrides.items():
        setattr(cfg, k, v)
    dm = LMDataModule(cfg, steps=3, seed=0)
    dm.setup("fit")
    return dm


def test_datamodule_split_is_deterministic(tmp_path: Path):
    f = _text_corpus(tmp_path)
    data = np.frombuffer(f.read_bytes(), dtype=np.uint8)
    dm = _module(f)
    n_val = math.ceil(len(data) * 0.1)
    assert np.array_equal(dm.val_tokens, data[-n_val:])  # the last val_fraction of the stream
    assert np.array_equal(dm.train_tokens, data[:-n_val])
    again = _module(f)
    assert np.array_equal(again.val_tokens, dm.val_tokens)
    assert np.array_equal(again.train_tokens, dm.train_tokens)


def test_datamodule_batches(tmp_path: Path):
    dm = _module(_text_corpus(tmp_path))
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == y.shape == (4, 16)
    again = list(_module(_text_corpus(tmp_path)).train_dataloader())
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    ev = dm.eval_batches()
    x = torch.cat([x for x, _ in ev]).flatten()
    assert x.numel() == 256
    assert torch.equal(x, torch.from_numpy(dm.val_tokens[:256].astype(np.int64)))
    assert dm.bits_per_byte(math.log(2)) == pytest.approx(1.0)


def test_datamodule_describe(tmp_path: Path):
    f = _text_corpus(tmp_path)
    dm = _module(f)
    d = dm.describe()
    assert d["fingerprint"] == load_corpus("text", path=str(f)).fingerprint
    assert d["unigram_val_bpb"] == pytest.approx(unigram_bits_per_token(dm.train_tokens, dm.val_tokens, 256))
    assert 0 < d["unigram_val_bpb"] <= 8.0
    assert d["train_tokens"] + d["val_tokens"] == d["n_bytes"] == 3000
    assert d["vocab_size"] == 256


def test_datamodule_corpus_too_small(tmp_path: Path):
    f = tmp_path / "tiny.txt"
    f.write_bytes(b"x" * 60)
    dm = LMDataModule(DataConfig(corpus="text", path=str(f), seq_len=16, batch_size=2, val_fraction=0.1), steps=3, seed=0)
    with pytest.raises(DataError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert "\n" not in message
    assert "seq_len=16" in message
