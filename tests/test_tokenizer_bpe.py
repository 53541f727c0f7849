"""Byte-level BPE (qat_lab.data.bpe), the split/caching pipeline (prepare) and exact bits-per-byte."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qat_lab.config import DataConfig
from qat_lab.data import bpe, prepare
from qat_lab.data.corpora import DOCUMENT_SEPARATOR, load_corpus
from qat_lab.data.datamodule import LMDataModule
from qat_lab.errors import ConfigError, DataError

VOCAB = 300
WORDS = ["the", "king", "queen", "crown", "ghost", "night", "sword", "Hamlet", "Ophelia", "café", "naïve", "Ærø",
         "über", "日本", "🙂", "rest", "is", "silence", "to", "be", "or", "not"]


def _text(n_words: int = 6000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = rng.choice(WORDS, size=n_words)
    lines = [" ".join(words[i : i + 9]) for i in range(0, n_words, 9)]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tok() -> bpe.HFTokenizer:
    return bpe.HFTokenizer.train(iter([_text()]), VOCAB)


def _cfg(path: Path, cache: Path, **kw) -> DataConfig:
    base = dict(corpus="text", path=str(path), tokenizer="bpe", vocab_size=VOCAB, cache_dir=str(cache),
                seq_len=16, batch_size=4, val_fraction=0.1, val_tokens=512)
    return DataConfig(**{**base, **kw})


def _module(cfg: DataConfig) -> LMDataModule:
    dm = LMDataModule(cfg, steps=3, seed=0)
    dm.setup("fit")
    return dm


def _all(tokens) -> np.ndarray:
    return np.asarray(tokens[0 : len(tokens)])


# --- the byte <-> char map and the tokenizer --------------------------------------------------------

def test_byte_map_is_the_byte_level_alphabet():
    from tokenizers import pre_tokenizers

    b2u = bpe.bytes_to_unicode()
    assert sorted(b2u) == list(range(256))
    assert len(set(b2u.values())) == 256
    assert set(b2u.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    assert all(bpe.unicode_to_bytes()[c] == b for b, c in b2u.items())


def test_trained_tokenizer_is_byte_level_and_sized(tok):
    assert tok.byte_level
    assert 256 < tok.vocab_size <= VOCAB
    assert len(tok.byte_lengths) == tok.vocab_size
    assert tok.byte_lengths.min() >= 1  # no special tokens: every token is some bytes
    assert tok.name == f"bpe-{VOCAB}" and len(tok.sha256) == 64


def test_training_is_deterministic(tok):
    again = bpe.HFTokenizer.train(iter([_text()]), VOCAB)
    assert again.sha256 == tok.sha256
    other = bpe.HFTokenizer.train(iter([_text(seed=1)]), VOCAB)
    assert other.sha256 != tok.sha256


@pytest.mark.parametrize("data", [
    "plain ascii text\nwith lines\n".encode(),
    "unicode: café, naïve, 日本語, 🙂🙂\n".encode(),
    b"latin-1 bytes \xe9\xe8 and \xff\xfe garbage \x80 mid-" + "café".encode() + b"\xc3",
    b"",
    bytes(range(256)),
])
def test_round_trip_is_exact_and_byte_table_counts_bytes(tok, data):
    ids = tok.encode(data)
    assert tok.decode_bytes(ids) == data
    assert int(tok.byte_lengths[ids].sum()) == len(data)
    assert all(0 <= i < tok.vocab_size for i in ids)


def test_subwords_compress(tok):
    data = _text(seed=3).encode()
    assert len(tok.encode(data)) < 0.6 * len(data)


def test_blocks_do_not_depend_on_how_the_stream_is_delivered():
    data = ("äbc 日本\n" * 50 + "x" * 300 + "🙂" * 40 + "\n").encode()
    whole = list(bpe.blocks([data], block=64))
    assert b"".join(whole) == data
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = sorted(rng.choice(len(data), size=20, replace=False))
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        assert list(bpe.blocks(pieces, block=64)) == whole
    for b in whole:
        b.decode("utf-8")  # no block splits a character
        assert len(b) <= 64


def test_tokenizer_file_that_is_not_byte_level(tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(["a b c a b"], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    path = tmp_path / "wl.json"
    t.save(str(path))
    loaded = bpe.HFTokenizer.from_file(path)
    assert not loaded.byte_level and loaded.byte_lengths is None
    with pytest.raises(DataError):
        loaded.encode(b"a b")


def test_special_tokens_count_zero_bytes_and_prefix_space_is_refused(tmp_path: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    def make(prefix_space: bool):
        t = Tokenizer(models.BPE())
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space)
        t.decoder = decoders.ByteLevel()
        t.train_from_iterator([_text(500)], trainers.BpeTrainer(
            vocab_size=280, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        path = tmp_path / f"gpt2-like-{prefix_space}.json"
        t.save(str(path))
        return bpe.HFTokenizer.from_file(path)

    tok = make(False)
    eot = tok.tk.token_to_id("<|endoftext|>")
    assert tok.byte_level and tok.byte_lengths[eot] == 0  # a document delimiter, not text
    ids = tok.encode("the king".encode())
    assert tok.decode_bytes([*ids, eot, *ids]) == b"the kingthe king"
    message = str(pytest.raises(DataError, tok.encode, b"a <|endoftext|> b").value)
    assert "<|endoftext|>" in message and "\n" not in message
    with pytest.raises(DataError, match="round-trip"):
        make(True).encode(b"the king")


def test_bad_tokenizer_file_is_one_line(tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    for path in (bad, tmp_path / "missing.json"):
        with pytest.raises(DataError) as info:
            bpe.HFTokenizer.from_file(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


# --- cache ---------------------------------------------------------------------------------------

def test_trained_tokenizer_is_cached_by_key(tmp_path: Path, monkeypatch):
    calls = []

    def texts():
        calls.append(1)
        return iter([_text()])

    a, path = bpe.load_or_train(texts, VOCAB, {"corpus": "abc"}, tmp_path)
    assert path.is_file() and path.parent == tmp_path / "tokenizers" and len(calls) == 1
    monkeypatch.setattr(bpe.HFTokenizer, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    b, again = bpe.load_or_train(texts, VOCAB, {"corpus": "abc"}, tmp_path)
    assert again == path and b.sha256 == a.sha256 and len(calls) == 1
    monkeypatch.undo()
    _, other_corpus = bpe.load_or_train(texts, VOCAB, {"corpus": "abd"}, tmp_path)
    _, other_vocab = bpe.load_or_train(texts, VOCAB + 10, {"corpus": "abc"}, tmp_path)
    assert len({path, other_corpus, other_vocab}) == 3


# --- the data module with a BPE --------------------------------------------------------------------

@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text(_text(4000, seed=1))
    (d / "b.txt").write_text(_text(4000, seed=2))
    return d


def test_bpe_split_is_lossless_and_trained_on_train_only(corpus_dir: Path, tmp_path: Path):
    dm = _module(_cfg(corpus_dir, tmp_path / "cache"))
    joined = load_corpus("text", path=str(corpus_dir)).joined()
    train = dm.tokenizer.decode_bytes(_all(dm.train_tokens))
    val = dm.tokenizer.decode_bytes(_all(dm.val_tokens))
    assert train + val == joined  # nothing lost, nothing added
    cut = prepare.split_point(len(joined), 0.1)
    assert cut <= len(train) <= cut + 3  # moved forward to a character start at most
    val.decode("utf-8")  # starts on a character
    # the tokenizer saw only the train split: training on train bytes alone gives the same one
    again = bpe.HFTokenizer.train(bpe.training_texts([train]), VOCAB)
    assert again.sha256 == dm.tokenizer.sha256


def test_bpb_is_exact_over_the_evaluated_targets(corpus_dir: Path, tmp_path: Path):
    dm = _module(_cfg(corpus_dir, tmp_path / "cache"))
    batches = dm.eval_batches()
    targets = torch.cat([y.flatten() for _, y in batches]).numpy()
    n_bytes = len(dm.tokenizer.decode_bytes(targets))  # decode and count, independently
    assert n_bytes != len(targets)  # a real BPE: not one byte per token
    loss = 1.7
    assert dm.bits_per_byte(loss) == pytest.approx(loss * len(targets) / math.log(2) / n_bytes, rel=1e-12)
    # a shorter set of windows (the quick validation) gets its own exact count
    quick = dm.eval_batches(64)
    q_targets = torch.cat([y.flatten() for _, y in quick]).numpy()
    q_bytes = len(dm.tokenizer.decode_bytes(q_targets))
    assert dm.bits_per_byte_for(quick)(loss) == pytest.approx(loss * len(q_targets) / math.log(2) / q_bytes, rel=1e-12)
    d = dm.describe()
    assert d["val_eval_tokens"] == len(targets) and d["val_eval_bytes"] == n_bytes and d["bpb_exact"] is True


def test_bpe_describe_and_vocab(corpus_dir: Path, tmp_path: Path):
    dm = _module(_cfg(corpus_dir, tmp_path / "cache"))
    d = dm.describe()
    assert dm.vocab_size == d["vocab_size"] == VOCAB
    assert d["tokenizer"] == f"bpe-{VOCAB}" and d["tokenizer_vocab_size"] <= VOCAB
    assert d["tokenizer_sha256"] == dm.tokenizer.sha256 and Path(d["tokenizer_path"]).is_file()
    assert d["fingerprint"] == load_corpus("text", path=str(corpus_dir)).fingerprint
    assert d["fingerprint_kind"] == "sha256-content"
    assert d["train_bytes"] + d["val_bytes"] == len(load_corpus("text", path=str(corpus_dir)).joined())
    assert d["n_documents"] == 2 and d["val_fraction"] == 0.1
    assert 0 < d["unigram_val_bpb"] < 8
    json.dumps(d)  # fits the run record
    for x, y in dm.train_dataloader():
        assert x.shape == (4, 16) and int(x.max()) < VOCAB and x.dtype == torch.int64


def test_second_setup_reads_the_cache(corpus_dir: Path, tmp_path: Path, monkeypatch):
    first = _module(_cfg(corpus_dir, tmp_path / "cache"))
    monkeypatch.setattr(prepare, "write_token_shards", lambda *a, **k: pytest.fail("re-encoded"))
    monkeypatch.setattr(bpe.HFTokenizer, "train", classmethod(lambda *a, **k: pytest.fail("retrained")))
    second = _module(_cfg(corpus_dir, tmp_path / "cache"))
    assert second.token_cache == first.token_cache
    assert np.array_equal(_all(second.val_tokens), _all(first.val_tokens))


def test_a_changed_corpus_gets_a_new_tokenizer(corpus_dir: Path, tmp_path: Path):
    first = _module(_cfg(corpus_dir, tmp_path / "cache"))
    with open(corpus_dir / "b.txt", "a") as f:
        f.write("one more line of the ghost\n")
    second = _module(_cfg(corpus_dir, tmp_path / "cache"))
    assert second.describe()["fingerprint"] != first.describe()["fingerprint"]
    assert second.token_cache != first.token_cache
    assert second.describe()["tokenizer_path"] != first.describe()["tokenizer_path"]


def test_tokenizer_file_gives_the_same_tokens(corpus_dir: Path, tmp_path: Path):
    trained = _module(_cfg(corpus_dir, tmp_path / "cache"))
    path = trained.tokenizer.save(tmp_path / "tok.json")
    loaded = _module(_cfg(corpus_dir, tmp_path / "cache2", tokenizer="file", tokenizer_file=str(path), vocab_size=None))
    assert np.array_equal(_all(loaded.train_tokens), _all(trained.train_tokens))
    assert loaded.vocab_size == trained.tokenizer.vocab_size
    assert loaded.describe()["tokenizer"] == "file:tok.json"
    padded = _module(_cfg(corpus_dir, tmp_path / "cache2", tokenizer="file", tokenizer_file=str(path), vocab_size=512))
    assert padded.vocab_size == 512
    with pytest.raises(DataError):
        _module(_cfg(corpus_dir, tmp_path / "cache2", tokenizer="file", tokenizer_file=str(path), vocab_size=100))


def test_invalid_utf8_corpus_round_trips(tmp_path: Path):
    f = tmp_path / "latin1.txt"
    f.write_bytes(("señor café " * 400).encode("latin-1") + ("naïve 日本 " * 400).encode())
    dm = _module(_cfg(f, tmp_path / "cache", vocab_size=280))
    assert dm.tokenizer.decode_bytes(_all(dm.train_tokens)) + dm.tokenizer.decode_bytes(_all(dm.val_tokens)) == f.read_bytes()


# --- config ------------------------------------------------------------------------------------------

def test_bpe_vocab_defaults_to_1024(corpus_dir: Path):
    assert DataConfig(corpus="text", path=str(corpus_dir), tokenizer="bpe").vocab_size == 1024


@pytest.mark.parametrize(("kw", "error", "key"), [
    (dict(tokenizer="bpe", vocab_size=200), ConfigError, "data.vocab_size=200"),
    (dict(tokenizer="bpe", vocab_size=70000), ConfigError, "data.vocab_size=70000"),
    (dict(tokenizer="wordpiece"), ConfigError, "data.tokenizer=wordpiece"),
    (dict(tokenizer="none", vocab_size=10), ConfigError, "data.tokenizer=none"),
    (dict(tokenizer="file"), ConfigError, "data.tokenizer_file"),
    (dict(tokenizer="file", tokenizer_file="/no/such/tok.json"), DataError, "/no/such/tok.json"),
    (dict(vocab_size=100), ConfigError, "data.vocab_size=100"),
    (dict(vocab_size=-3), ConfigError, "data.vocab_size=-3"),
    (dict(tokenizer_train_bytes=0), ConfigError, "data.tokenizer_train_bytes=0"),
    (dict(corpus="hf", hf_format="csv"), ConfigError, "data.hf_format=csv"),
])
def test_bad_tokenizer_settings_are_one_line(corpus_dir: Path, kw, error, key):
    base = dict(corpus="text", path=str(corpus_dir))
    with pytest.raises(error) as info:
        DataConfig(**{**base, **kw})
    assert type(info.value) is error
    assert "\n" not in str(info.value) and key in str(info.value)


def test_byte_tokenizer_path_is_unchanged(tmp_path: Path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"abcdefgh" * 100)
    dm = LMDataModule(DataConfig(corpus="text", path=str(f), seq_len=16, batch_size=4, val_fraction=0.1), 3, 0)
    dm.setup()
    assert isinstance(dm.train_tokens, np.ndarray) and dm.token_cache is None
    assert dm.bits_per_byte(math.log(2)) == 1.0
    assert dm.describe()["tokenizer"] == "bytes" and dm.describe()["bpb_exact"] is True
    assert DOCUMENT_SEPARATOR == b"\n\n"
