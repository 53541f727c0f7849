"""Token shards (qat_lab.data.shards), the shard-writing tool and `hf` corpora read through `datasets`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from qat_lab.config import DataConfig
from qat_lab.data import prepare, shards
from qat_lab.data.corpora import DOCUMENT_SEPARATOR
from qat_lab.data.datamodule import LMDataModule, RandomWindows
from qat_lab.data.shards import ShardSet, ShardWriter, read_header, write_shard
from qat_lab.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _one_line(error, fn, *args, **kw) -> str:
    with pytest.raises(error) as info:
        fn(*args, **kw)
    assert type(info.value) is error
    assert "\n" not in str(info.value)
    return str(info.value)


def _all(tokens) -> np.ndarray:
    return np.asarray(tokens[0 : len(tokens)])


# --- the format ----------------------------------------------------------------------------------

def test_write_shard_layout(tmp_path: Path):
    tokens = np.array([0, 1, 255, 256, 50256, 65535], dtype=np.int64)
    path = write_shard(tmp_path / "x_train_000000.bin", tokens)
    raw = path.read_bytes()
    assert len(raw) == 256 * 4 + 2 * len(tokens)
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert list(header[:3]) == [20240520, 1, len(tokens)] and not header[3:].any()
    # the reader modded-nanogpt uses: uint16 little-endian after the header
    assert np.array_equal(np.frombuffer(raw[1024:], dtype="<u2"), tokens)
    assert read_header(path) == len(tokens)
    assert np.array_equal(shards.open_shard(path), tokens)
    assert not list(tmp_path.glob(".*"))  # no temp file left behind


def test_write_shard_rejects_ids_outside_uint16(tmp_path: Path):
    for bad in ([0, 65536], [-1, 3], [[1, 2]]):
        message = _one_line(DataError, write_shard, tmp_path / "bad.bin", np.array(bad))
        assert "bad.bin" in message
    assert not (tmp_path / "bad.bin").exists()


@pytest.mark.parametrize(("patch", "expected"), [
    (lambda h, t: (h.__setitem__(0, 12345), t)[1], "magic 12345"),
    (lambda h, t: (h.__setitem__(1, 2), t)[1], "version 2"),
    (lambda h, t: (h.__setitem__(2, 11), t)[1], "header says 11 tokens"),
    (lambda h, t: t[:-4], "header says 10 tokens"),
])
def test_bad_header_is_one_line_naming_the_file(tmp_path: Path, patch, expected):
    path = write_shard(tmp_path / "s.bin", np.arange(10))
    raw = bytearray(path.read_bytes())
    header = np.frombuffer(raw[:1024], dtype="<i4").copy()
    body = patch(header, bytes(raw[1024:]))
    path.write_bytes(header.tobytes() + body)
    message = _one_line(DataError, read_header, path)
    assert str(path) in message and expected in message


def test_short_file_is_not_a_shard(tmp_path: Path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x00" * 100)
    assert str(path) in _one_line(DataError, read_header, path)


def test_writer_rotates_shards_and_fills_headers(tmp_path: Path):
    w = ShardWriter(tmp_path, "d_train", shard_tokens=10)
    for part in (np.arange(7), np.arange(7, 18), np.arange(18, 25)):
        w.write(part)
    paths = w.close()
    assert [p.name for p in paths] == ["d_train_000000.bin", "d_train_000001.bin", "d_train_000002.bin"]
    assert [read_header(p) for p in paths] == [10, 10, 5]
    assert np.array_equal(_all(ShardSet(paths)), np.arange(25))
    empty = ShardWriter(tmp_path, "e_val").close()
    assert len(empty) == 1 and read_header(empty[0]) == 0


def test_shardset_slices_across_shards(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(shards, "MAX_OPEN", 2)
    data = np.arange(1000) % 65536
    bounds = [0, 3, 250, 251, 600, 1000]
    paths = [write_shard(tmp_path / f"t_{i:06d}.bin", data[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    s = ShardSet(paths)
    assert len(s) == 1000 and s.dtype == np.uint16
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = int(rng.integers(0, 1000))
        b = int(rng.integers(a, 1001))
        assert np.array_equal(s[a:b], data[a:b])
        assert len(s._open) <= 2  # memmaps are opened lazily and a bounded number stay open
    assert np.array_equal(s[-5:], data[-5:]) and len(s[10:5]) == 0
    assert np.array_equal(np.concatenate(list(s.chunks(limit=700, size=64))), data[:700])
    with pytest.raises(TypeError):
        s[5]


def test_shardset_refuses_tokens_outside_the_vocabulary(tmp_path: Path):
    path = write_shard(tmp_path / "t.bin", [1, 2, 300, 4])
    s = ShardSet([path], vocab_limit=256)
    assert np.array_equal(s[0:2], [1, 2])
    message = _one_line(DataError, lambda: s[0:4])
    assert str(path) in message and "300" in message


def test_random_windows_over_shards(tmp_path: Path):
    data = np.arange(5000)
    paths = [write_shard(tmp_path / f"t_{i}.bin", data[i * 1000 : (i + 1) * 1000]) for i in range(5)]
    ds = RandomWindows(ShardSet(paths), steps=6, batch_size=8, seq_len=32, seed=0)
    starts = set()
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (8, 32) and x.dtype == torch.int64
        for b in range(8):
            s = int(x[b, 0])
            assert torch.equal(x[b], torch.arange(s, s + 32)) and torch.equal(y[b], torch.arange(s + 1, s + 33))
            starts.add(s // 1000)
    assert len(starts) >= 4  # windows are drawn across the shards


def test_sampled_fingerprint(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(shards, "FINGERPRINT_SAMPLE", 64)
    a = write_shard(tmp_path / "a.bin", np.arange(1000))
    b = write_shard(tmp_path / "b.bin", np.arange(10))
    fp = shards.sampled_fingerprint([a, b], tmp_path)
    assert fp == shards.sampled_fingerprint([a, b], tmp_path) and len(fp) == 64
    assert fp != shards.sampled_fingerprint([b, a], tmp_path)
    write_shard(a, np.arange(1, 1001))  # same size, other content at both ends
    assert shards.sampled_fingerprint([a, b], tmp_path) != fp


# --- shard datasets in the data module -------------------------------------------------------------

def _byte_shards(root: Path, text: bytes, n_train: int = 3) -> tuple[np.ndarray, np.ndarray]:
    tokens = np.frombuffer(text, dtype=np.uint8)
    n_val = len(tokens) // 10
    train, val = tokens[:-n_val], tokens[-n_val:]
    for i, part in enumerate(np.array_split(train, n_train)):
        write_shard(root / f"fineweb_train_{i:06d}.bin", part)
    write_shard(root / "fineweb_val_000000.bin", val)
    return train, val


def _shard_cfg(root: Path, **kw) -> DataConfig:
    base = dict(corpus="shards", path=str(root), tokenizer="bytes", seq_len=16, batch_size=4, val_tokens=256)
    return DataConfig(**{**base, **kw})


def _module(cfg: DataConfig) -> LMDataModule:
    dm = LMDataModule(cfg, steps=3, seed=0)
    dm.setup("fit")
    return dm


def _corpus_text(n: int = 20000, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return bytes(rng.integers(97, 123, size=n, dtype=np.uint8))


def test_byte_shards_train_and_evaluate_exactly(tmp_path: Path):
    train, val = _byte_shards(tmp_path, _corpus_text())
    dm = _module(_shard_cfg(tmp_path))
    assert isinstance(dm.train_tokens, ShardSet)  # memory-mapped, not loaded
    assert np.array_equal(_all(dm.train_tokens), train) and np.array_equal(_all(dm.val_tokens), val)
    x = torch.cat([x for x, _ in dm.eval_batches()]).flatten()
    assert torch.equal(x, torch.from_numpy(val[:256].astype(np.int64)))  # contiguous, from the val start
    assert dm.bits_per_byte(math.log(2)) == 1.0
    for xb, yb in dm.train_dataloader():
        assert xb.shape == (4, 16) and int(xb.max()) < 256
    d = dm.describe()
    assert d["corpus"] == f"shards:{tmp_path.name}" and d["vocab_size"] == 256 and d["tokenizer"] == "bytes"
    assert (d["train_shards"], d["val_shards"]) == (3, 1) and d["bpb_exact"] is True
    assert d["train_tokens"] == len(train) and d["val_fraction"] is None and d["fingerprint_kind"] == "sha256-sampled"
    assert 0 < d["unigram_val_bpb"] <= 8
    json.dumps(d)


def test_shard_fingerprint_follows_the_files(tmp_path: Path):
    _byte_shards(tmp_path, _corpus_text())
    fp = _module(_shard_cfg(tmp_path)).describe()["fingerprint"]
    assert _module(_shard_cfg(tmp_path)).describe()["fingerprint"] == fp
    write_shard(tmp_path / "fineweb_train_000003.bin", np.frombuffer(b"more", dtype=np.uint8))
    assert _module(_shard_cfg(tmp_path)).describe()["fingerprint"] != fp


def test_shards_without_a_tokenizer_have_no_bpb(tmp_path: Path):
    _byte_shards(tmp_path, _corpus_text())
    dm = _module(_shard_cfg(tmp_path, tokenizer="none", vocab_size=300))
    assert dm.vocab_size == 300 and dm.bits_per_byte(1.0) is None and dm.bits_per_byte_for(dm.eval_batches())(1.0) is None
    d = dm.describe()
    assert d["bpb_exact"] is False and d["unigram_val_bpb"] is None and d["tokenizer"] == "none"
    assert d["val_eval_bytes"] is None


def test_shards_with_ids_beyond_the_vocab_fail_in_one_line(tmp_path: Path):
    write_shard(tmp_path / "x_train_000000.bin", np.arange(600) % 400)
    write_shard(tmp_path / "x_val_000000.bin", np.arange(100))
    message = _one_line(DataError, _module, _shard_cfg(tmp_path))
    assert "x_train_000000.bin" in message and "outside the vocabulary" in message


def test_missing_shards_and_sidecar_are_one_line(tmp_path: Path):
    message = _one_line(DataError, _module, _shard_cfg(tmp_path))
    assert "_train_" in message and str(tmp_path) in message
    _byte_shards(tmp_path, _corpus_text())
    message = _one_line(DataError, _module, _shard_cfg(tmp_path, tokenizer="file"))
    assert "tokenizer.json" in message and "data.tokenizer=none" in message
    _one_line(DataError, _module, _shard_cfg(tmp_path, val_glob="*.bin"))  # val overlaps train


def test_shard_config_errors(tmp_path: Path):
    assert "path" in _one_line(ConfigError, DataConfig, corpus="shards")
    assert str(tmp_path / "nope") in _one_line(DataError, DataConfig, corpus="shards", path=str(tmp_path / "nope"))
    f = tmp_path / "file.bin"
    f.write_bytes(b"")
    assert "folder" in _one_line(DataError, DataConfig, corpus="shards", path=str(f))
    assert "data.tokenizer=bpe" in _one_line(ConfigError, DataConfig, corpus="shards", path=str(tmp_path), tokenizer="bpe")
    assert "data.vocab_size" in _one_line(ConfigError, DataConfig, corpus="shards", path=str(tmp_path), tokenizer="none")


# --- the shard-writing tool ------------------------------------------------------------------------

def _words(n: int = 3000, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = rng.choice(["to", "be", "or", "not", "that", "is", "the", "question", "café", "whether"], size=n)
    return "\n".join(" ".join(words[i : i + 8]) for i in range(0, n, 8)) + "\n"


def test_tool_writes_the_tokens_qatlab_would_train_on(tmp_path: Path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text(_words())
    out, cache = tmp_path / "out", tmp_path / "cache"
    rc = prepare.main([str(out), "--path", str(text), "--vocab-size", "280", "--cache-dir", str(cache),
                       "--shard-tokens", "2000", "--val-fraction", "0.1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert f"qatlab data=shards path={out}" in printed
    assert len(list(out.glob("data_train_*.bin"))) > 1 and (out / "tokenizer.json").is_file()
    from_shards = _module(_shard_cfg(out, tokenizer="file", cache_dir=str(cache)))  # tokenizer.json sidecar
    from_text = _module(DataConfig(corpus="text", path=str(text), tokenizer="bpe", vocab_size=280, cache_dir=str(cache),
                                   val_fraction=0.1, seq_len=16, batch_size=4, val_tokens=256))
    assert np.array_equal(_all(from_shards.train_tokens), _all(from_text.train_tokens))
    assert np.array_equal(_all(from_shards.val_tokens), _all(from_text.val_tokens))
    assert from_shards.bits_per_byte(1.0) == from_text.bits_per_byte(1.0)
    assert from_shards.describe()["tokenizer_sha256"] == from_text.describe()["tokenizer_sha256"]
    # a second run refuses to mix its shards with these, unless asked
    assert prepare.main([str(out), "--path", str(text), "--tokenizer", "bytes"]) == 2
    assert "--force" in capsys.readouterr().err
    assert prepare.main([str(out), "--path", str(text), "--tokenizer", "bytes", "--force", "--prefix", "data"]) == 0
    assert "data.tokenizer=bytes" in capsys.readouterr().out
    assert _module(_shard_cfg(out)).vocab_size == 256


def test_tool_errors_are_one_line(tmp_path: Path, capsys):
    assert prepare.main([str(tmp_path / "out"), "--path", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing.txt" in err




# --- hf corpora: local files through `datasets` ----------------------------------------------------

def _hf_cfg(path: Path, tmp_path: Path, **kw) -> DataConfig:
    base = dict(corpus="hf", path=str(path), glob="**/*", cache_dir=str(tmp_path / "cache"), seq_len=16, batch_size=4,
                val_fraction=0.1, val_tokens=256)
    return DataConfig(**{**base, **kw})


def _stream(dm: LMDataModule) -> bytes:
    return dm.tokenizer.decode_bytes(_all(dm.train_tokens)) + dm.tokenizer.decode_bytes(_all(dm.val_tokens))


DOCS = [_words(200, seed=i) for i in range(12)]


def test_hf_parquet(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"id": list(range(6)), "content": DOCS[:6]}), d / "part-0.parquet")
    pq.write_table(pa.table({"id": list(range(6)), "content": DOCS[6:]}), d / "part-1.parquet")
    dm = _module(_hf_cfg(d, tmp_path, text_field="content"))
    assert _stream(dm) == DOCUMENT_SEPARATOR.join(doc.encode() for doc in DOCS)
    desc = dm.describe()
    assert desc["corpus"] == "hf:pq" and desc["n_documents"] == 12 and desc["tokenizer"] == "bytes"
    assert desc["n_bytes"] == sum(len(doc.encode()) for doc in DOCS) and desc["fingerprint_kind"] == "sha256-sampled"
    assert isinstance(dm.train_tokens, ShardSet) and Path(desc["token_cache"]).is_dir()
    assert dm.bits_per_byte(math.log(2)) == 1.0
    message = _one_line(DataError, _module, _hf_cfg(d, tmp_path / "other", text_field="text"))
    assert "'text'" in message and "content" in message


def test_hf_jsonl_with_bpe(tmp_path: Path):
    d = tmp_path / "js"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": doc, "n": i}) + "\n" for i, doc in enumerate(DOCS)))
    dm = _module(_hf_cfg(d, tmp_path, tokenizer="bpe", vocab_size=280))
    assert _stream(dm) == DOCUMENT_SEPARATOR.join(doc.encode() for doc in DOCS)
    assert dm.vocab_size == 280 and dm.describe()["bpb_exact"] is True
    targets = torch.cat([y.flatten() for _, y in dm.eval_batches()]).numpy()
    exact = math.log(2) * len(targets) / math.log(2) / len(dm.tokenizer.decode_bytes(targets))
    assert dm.bits_per_byte(math.log(2)) == pytest.approx(exact, rel=1e-12)


def test_hf_text_keeps_the_files_text(tmp_path: Path):
    d = tmp_path / "tx"
    d.mkdir()
    (d / "a.txt").write_text(DOCS[0] + "\n" + DOCS[1])
    (d / "b.txt").write_text(DOCS[2])
    dm = _module(_hf_cfg(d, tmp_path, glob="*.txt"))
    assert _stream(dm) == (DOCS[0] + "\n" + DOCS[1] + DOCS[2]).encode()


def test_hf_cache_is_reused_and_sizes_remembered(tmp_path: Path, monkeypatch):
    d = tmp_path / "js"
    d.mkdir()
    (d / "a.jsonl").write_text("".join(json.dumps({"text": doc}) + "\n" for doc in DOCS))
    first = _module(_hf_cfg(d, tmp_path))
    from qat_lab.data import hf

    monkeypatch.setattr(hf, "iter_texts", lambda *a, **k: pytest.fail("read the files again"))
    second = _module(_hf_cfg(d, tmp_path))
    assert second.token_cache == first.token_cache


def test_hf_format_errors(tmp_path: Path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "a.jsonl").write_text('{"text": "x"}\n')
    (d / "b.csv").write_text("text\nx\n")
    assert "data.hf_format" in _one_line(DataError, _module, _hf_cfg(d, tmp_path))
    (d / "b.csv").unlink()
    (d / "a.jsonl").write_text("{not json\n")
    assert "json" in _one_line(DataError, _module, _hf_cfg(d, tmp_path))
    assert "no files matching" in _one_line(DataError, _module, _hf_cfg(d, tmp_path, glob="*.parquet"))


# --- Hydra configs -------------------------------------------------------------------------------------

def test_data_groups_compose(tmp_path: Path):
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from qat_lab.config import build_spec

    _byte_shards(tmp_path, _corpus_text())

    def compose(overrides):
        GlobalHydra.instance().clear()
        with hydra.initialize_config_module(config_module="qat_lab.conf", version_base="1.3"):
            return build_spec(hydra.compose("config", overrides=overrides))

    spec = compose(["data=shards", f"path={tmp_path}", "data.tokenizer=bytes"])
    assert (spec.data.corpus, spec.data.path, spec.data.train_glob) == ("shards", str(tmp_path), "*_train_*.bin")
    assert compose(["data=shards", f"path={tmp_path}"]).data.tokenizer == "file"
    spec = compose(["data=hf", f"path={tmp_path}", "data.text_field=body"])
    assert (spec.data.corpus, spec.data.glob, spec.data.text_field) == ("hf", "**/*.parquet", "body")
    spec = compose(["data.tokenizer=bpe", "data.vocab_size=512"])
    assert (spec.data.corpus, spec.data.tokenizer, spec.data.vocab_size) == ("shakespeare", "bpe", 512)
    assert compose(["data.tokenizer=bpe"]).data.vocab_size == 1024


# --- what identifies a corpus -------------------------------------------------------------------------

def test_corpus_fingerprint_is_what_a_job_records_for_every_kind_of_corpus(tmp_path: Path):
    """data/fingerprint.py is the one rule: the preflight's fingerprint of a data config equals the
    one the data module records, for text files, shards and hf files, and it follows the content."""
    from qat_lab.data.fingerprint import corpus_fingerprint

    text = tmp_path / "a" / "corp"
    text.mkdir(parents=True)
    (text / "t.txt").write_bytes(_corpus_text(4000))
    shards = tmp_path / "shards"
    _byte_shards(shards, _corpus_text(20000))
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "d.txt").write_text("\n".join(DOCS[:6]))
    cfgs = [DataConfig(corpus="text", path=str(text), seq_len=16, batch_size=4, val_fraction=0.1, val_tokens=256),
            _shard_cfg(shards), _hf_cfg(hf_dir, tmp_path)]
    prints = [corpus_fingerprint(cfg) for cfg in cfgs]
    assert prints == [_module(cfg).facts["fingerprint"] for cfg in cfgs]
    assert len(set(prints)) == 3
    same = tmp_path / "b" / "corp"  # another folder, the same content: the same corpus
    same.mkdir(parents=True)
    (same / "t.txt").write_bytes((text / "t.txt").read_bytes())
    assert corpus_fingerprint(DataConfig(corpus="text", path=str(same))) == prints[0]
    (same / "t.txt").write_bytes(_corpus_text(4000, seed=1))
    assert corpus_fingerprint(DataConfig(corpus="text", path=str(same))) != prints[0]
