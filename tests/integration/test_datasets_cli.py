"""The real CLI on real-run datasets: token shards written by our tool, and a locally trained BPE."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from qat_lab.data.corpora import shakespeare_dir
from qat_lab.records import read_record
from tests.integration.conftest import BIN, TINY, run_cli

pytestmark = pytest.mark.slow


def _check_completed(record: dict, vocab_size: int) -> dict:
    assert record["status"] == "completed", record.get("error")
    res, data = record["results"], record["data"]
    assert math.isfinite(res["val_bpb"]) and 0 < res["val_bpb"] < 10
    assert math.isfinite(res["unigram_val_bpb"])
    assert data["vocab_size"] == vocab_size and data["bpb_exact"] is True
    # bits per byte = loss in bits per token * tokens / UTF-8 bytes of exactly the evaluated targets
    assert data["val_eval_tokens"] == record["tokens"]["val_final"]
    expected = res["val_loss"] / math.log(2) * data["val_eval_tokens"] / data["val_eval_bytes"]
    assert res["val_bpb"] == pytest.approx(expected, rel=1e-9)
    assert data["val_eval_bytes"] > data["val_eval_tokens"]  # subword tokens: more than a byte each
    return data


def test_token_shards_train_end_to_end(tmp_path: Path):
    # a small real text -> BPE token shards with the tool (as a module, in a subprocess)
    play = sorted(shakespeare_dir().rglob("*.md"))[0]
    text = tmp_path / "play.txt"
    text.write_bytes(play.read_bytes()[:400_000])
    out, cache = tmp_path / "shards", tmp_path / "cache"
    tool = subprocess.run([str(BIN / "qatlab-shards"), str(out), "--path", str(text),
                           "--vocab-size", "512", "--shard-tokens", "20000", "--cache-dir", str(cache)],
                          capture_output=True, text=True, timeout=300)
    assert tool.returncode == 0, tool.stderr[-3000:]
    assert "RuntimeWarning" not in tool.stderr
    assert len(list(out.glob("data_train_*.bin"))) > 1 and (out / "data_val_000000.bin").is_file()
    assert f"qatlab data=shards path={out}" in tool.stdout

    result = run_cli(["data=shards", f"path={out}", *TINY, "data.seq_len=64", "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = _check_completed(read_record(tmp_path / "run"), 512)
    assert data["corpus"] == "shards:shards" and data["tokenizer"] == "file:tokenizer.json"
    assert data["train_shards"] > 1 and data["val_shards"] == 1 and data["fingerprint_kind"] == "sha256-sampled"
    assert data["tokenizer_path"] == str((out / "tokenizer.json").resolve())


def test_bpe_tokenizer_trains_end_to_end(tmp_path: Path):
    cache = tmp_path / "cache"
    args = ["data.tokenizer=bpe", "data.vocab_size=1024", f"data.cache_dir={cache}", *TINY, "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    data = _check_completed(read_record(tmp_path / "run"), 1024)
    assert data["corpus"] == "shakespeare" and data["tokenizer"] == "bpe-1024" and data["tokenizer_vocab_size"] == 1024
    assert Path(data["tokenizer_path"]).parent == cache / "tokenizers"
    assert Path(data["token_cache"]).parent == cache / "tokens"
    assert len(list((cache / "tokenizers").glob("*.json"))) == 1
