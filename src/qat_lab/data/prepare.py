"""Corpus -> train/val split -> tokenizer -> token shards, streamed, and cached on disk.

Every tokenised dataset goes through one pipeline, whether the data module needs it (a BPE run,
an `hf` corpus) or a person writes shards for later runs (`qatlab-shards`, main() below):

1. a `Source`: the corpus as a byte stream (documents joined by the corpus separator), its size
   and its fingerprint;
2. the split: the last `val_fraction` of the stream's bytes is validation (the same rule as the
   byte tokenizer's split of the token stream); for tokenizers other than bytes the cut moves
   forward to the next UTF-8 character start;
3. the tokenizer: bytes, a BPE trained on the train split only (cached), or a tokenizer file;
4. train and val token shards (`shards.ShardWriter`), written while the stream is read.

The data module keeps step 4 under the cache dir, keyed by the corpus fingerprint, the
tokenizer's SHA-256, the split and the recipe, and memory-maps it: after the first job of a sweep
every job starts in milliseconds, and a corpus is never held in memory.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from qat_lab.atomic import atomic_dir, atomic_write
from qat_lab.cache import cache_root
from qat_lab.data import bpe, hf
from qat_lab.data.config import DataConfig
from qat_lab.data.fingerprint import hf_fingerprint
from qat_lab.data.corpora import DOCUMENT_SEPARATOR, Corpus, load_corpus
from qat_lab.data.shards import SHARD_TOKENS, ShardWriter
from qat_lab.data.tokenizer import ByteTokenizer
from qat_lab.errors import ConfigError, DataError

ENCODE_RECIPE = "split-bytes-v1"
"""Names the split + encoding rules above; part of the token cache key."""


@dataclass
class Source:
    """A corpus as a re-readable byte stream."""

    name: str
    root: str
    fingerprint: str
    fingerprint_kind: str
    """'sha256-content' (every byte hashed) or 'sha256-sampled' (sizes + first/last MiB; docs/data.md)."""
    pieces: Callable[[], Iterator[bytes]]
    n_bytes: int
    """Bytes in the joined stream (documents and separators)."""
    n_documents: int | None
    n_document_bytes: int | None
    """Bytes of the documents alone (without separators)."""


def corpus_source(corpus: Corpus) -> Source:
    def pieces() -> Iterator[bytes]:
        for i, (_, content) in enumerate(corpus.documents):
            if i:
                yield DOCUMENT_SEPARATOR
            yield content

    n = corpus.n_bytes + len(DOCUMENT_SEPARATOR) * (len(corpus.documents) - 1)
    return Source(corpus.name, corpus.root, corpus.fingerprint, "sha256-content", pieces, n, len(corpus.documents), corpus.n_bytes)


def hf_source(cfg: DataConfig, cache: Path) -> Source:
    root, files = hf.find_files(cfg.path, cfg.glob)
    fmt = hf.infer_format(files, cfg.hf_format)
    fingerprint = hf_fingerprint(root, files, fmt, cfg.text_field)

    def pieces() -> Iterator[bytes]:
        return hf.iter_pieces(files, fmt, cfg.text_field)

    # Sizes need one pass over the data; remember them (keyed by the fingerprint).
    counts_file = cache / "corpora" / f"{fingerprint[:20]}.json"
    try:
        counts = json.loads(counts_file.read_text())
    except (OSError, ValueError):
        counts = {"n_bytes": 0, "n_documents": 0, "n_document_bytes": 0}
        for piece in pieces():
            counts["n_bytes"] += len(piece)
            if piece is not DOCUMENT_SEPARATOR:
                counts["n_documents"] += 1
                counts["n_document_bytes"] += len(piece)
        _write_json(counts_file, counts)
    if counts["n_bytes"] == 0:
        raise DataError(f"path={cfg.path}: the {fmt} files have no text in field '{cfg.text_field}'")
    return Source(f"hf:{Path(cfg.path).expanduser().resolve().name}", str(root.resolve()), fingerprint, "sha256-sampled", pieces,
                  counts["n_bytes"], counts["n_documents"], counts["n_document_bytes"])


def source_for(cfg: DataConfig, cache: Path) -> Source:
    if cfg.corpus == "hf":
        return hf_source(cfg, cache)
    if cfg.corpus == "shards":
        raise ConfigError("data=shards is already tokenised; it has no text source")
    return corpus_source(load_corpus(cfg.corpus, cfg.path, cfg.glob))


# --- the split -------------------------------------------------------------------------------------

def split_point(n_bytes: int, val_fraction: float) -> int:
    """Bytes before the validation split (before any move to a character start)."""
    return n_bytes - int(math.ceil(n_bytes * val_fraction))


class Split:
    """Train pieces, then val pieces, of one pass over `pieces` (consume `train()` first)."""

    def __init__(self, pieces: Iterable[bytes], at: int, align: bool):
        self._it, self.at, self.align = iter(pieces), at, align
        self._rest = b""
        self.train_bytes = self.val_bytes = 0

    def train(self, limit: int | None = None) -> Iterator[bytes]:
        """The train split (its first `limit` bytes if given: for training a tokenizer)."""
        pos = 0
        for p in self._it:
            if pos + len(p) <= self.at:
                chunk = p
            else:
                k = self.at - pos
                if self.align:
                    while k < len(p) and (p[k] & 0xC0) == 0x80:
                        k += 1
                chunk, self._rest = p[:k], p[k:]
            if limit is not None and pos + len(chunk) >= limit:
                yield chunk[: limit - pos]
                return
            if chunk:
                yield chunk
            pos += len(chunk)
            self.train_bytes = pos
            if self._rest or pos >= self.at:
                return

    def val(self) -> Iterator[bytes]:
        if self._rest:
            self.val_bytes += len(self._rest)
            yield self._rest
        for p in self._it:
            self.val_bytes += len(p)
            yield p


# --- the tokenizer ---------------------------------------------------------------------------------

def make_tokenizer(cfg: DataConfig, source: Source | None, cache: Path):
    """The tokenizer `cfg` asks for; a BPE is trained on the train split of `source` (or loaded)."""
    if cfg.tokenizer == "bytes":
        return ByteTokenizer()
    if cfg.tokenizer == "file":
        path = cfg.tokenizer_file or (str(Path(cfg.path) / "tokenizer.json") if cfg.corpus == "shards" else None)
        if path is None:
            raise ConfigError("data.tokenizer=file needs data.tokenizer_file=<tokenizer.json>")
        if not Path(path).expanduser().is_file():
            raise DataError(f"tokenizer file {path} does not exist; set data.tokenizer_file=<tokenizer.json>"
                            + (", data.tokenizer=bytes (byte shards) or data.tokenizer=none data.vocab_size=<N> "
                               "(val_bpb unavailable)" if cfg.corpus == "shards" else ""))
        return bpe.HFTokenizer.from_file(path)
    if cfg.tokenizer == "bpe":
        if source is None:
            raise ConfigError("data.tokenizer=bpe trains on a text corpus; shards are already tokenised")

        def texts() -> Iterator[str]:
            split = Split(source.pieces(), split_point(source.n_bytes, cfg.val_fraction), align=True)
            return bpe.training_texts(split.train(limit=cfg.tokenizer_train_bytes))

        tok, _ = bpe.load_or_train(texts, cfg.vocab_size, {
            "corpus": source.fingerprint, "val_fraction": cfg.val_fraction,
            "train_bytes": cfg.tokenizer_train_bytes, "split": ENCODE_RECIPE}, cache)
        return tok
    return None  # 'none': ids only


# --- writing shards --------------------------------------------------------------------------------

def encode_stream(tokenizer, pieces: Iterable[bytes]):
    if isinstance(tokenizer, ByteTokenizer):
        return (tokenizer.encode(p) for p in pieces)
    return tokenizer.encode_stream(pieces)


def write_token_shards(source: Source, tokenizer, out_dir: Path, val_fraction: float, prefix: str = "",
                       shard_tokens: int = SHARD_TOKENS) -> dict:
    """Tokenise `source` into `<prefix>train_NNNNNN.bin` / `<prefix>val_NNNNNN.bin` under out_dir."""
    if getattr(tokenizer, "vocab_size", 0) > 65536:
        raise DataError(f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens: uint16 shards hold at most 65536")
    at = split_point(source.n_bytes, val_fraction)
    split = Split(source.pieces(), at, align=not isinstance(tokenizer, ByteTokenizer))
    files = {}
    for name, pieces in (("train", split.train), ("val", split.val)):
        writer = ShardWriter(out_dir, f"{prefix}{name}", shard_tokens)
        try:
            for ids in encode_stream(tokenizer, pieces()):
                writer.write(ids)
        finally:
            paths = writer.close()
        files[name] = ([p.name for p in paths], writer.n_tokens)
    return {
        "train": files["train"][0], "val": files["val"][0],
        "train_tokens": files["train"][1], "val_tokens": files["val"][1],
        "train_bytes": split.train_bytes, "val_bytes": split.val_bytes,
        "n_bytes": source.n_bytes, "n_documents": source.n_documents,
        "corpus": source.name, "fingerprint": source.fingerprint, "val_fraction": val_fraction,
        "tokenizer": tokenizer.name, "tokenizer_sha256": getattr(tokenizer, "sha256", None), "recipe": ENCODE_RECIPE,
    }


def _write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=1))


def cached_token_shards(source: Source, tokenizer, val_fraction: float, cache: Path) -> tuple[Path, dict]:
    """The token shards of (source, tokenizer, split) under cache/tokens/<key>/, built if absent.

    Built in a private temp dir and renamed into place with every file fsynced (atomic_dir), so
    concurrent jobs never read a half-written cache, nor one that a power cut left half on disk (if
    two build it at once, the second rename loses and its copy is deleted).
    """
    key = bpe.cache_key(recipe=ENCODE_RECIPE, corpus=source.fingerprint, val_fraction=val_fraction,
                        tokenizer=getattr(tokenizer, "sha256", None) or tokenizer.name)
    final = cache / "tokens" / key
    meta_file = final / "meta.json"
    if meta_file.is_file():
        return final, json.loads(meta_file.read_text())
    with atomic_dir(final) as tmp:
        _write_json(tmp / "meta.json", write_token_shards(source, tokenizer, tmp, val_fraction))
    return final, json.loads(meta_file.read_text())


# --- qatlab-shards (also python -m qat_lab.data.prepare) ----------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="qatlab-shards",
        description="Tokenise a corpus into uint16 token shards (256 x int32 header), train and val, "
                    "with the same split and tokenizer that qatlab would use. Train on them with "
                    "`qatlab data=shards path=OUT_DIR`.")
    p.add_argument("out_dir", help="folder for <prefix>_train_NNNNNN.bin, <prefix>_val_NNNNNN.bin (and tokenizer.json)")
    p.add_argument("--corpus", default="text", choices=["shakespeare", "python_stdlib", "text", "hf"])
    p.add_argument("--path", help="file or folder for --corpus text / hf")
    p.add_argument("--glob", default=None, help="files taken from a --path folder (default **/*.txt; hf: **/*.parquet)")
    p.add_argument("--hf-format", default=None, choices=list(hf.FORMATS))
    p.add_argument("--text-field", default="text")
    p.add_argument("--tokenizer", default="bpe", choices=["bytes", "bpe", "file"])
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary (default 1024)")
    p.add_argument("--tokenizer-file", default=None, help="a tokenizers JSON for --tokenizer file")
    p.add_argument("--val-fraction", type=float, default=0.05)
    p.add_argument("--prefix", default="data", help="shard file prefix (default: data)")
    p.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS)
    p.add_argument("--cache-dir", default=None, help="where a trained BPE is cached (default ~/.cache/qat_lab)")
    p.add_argument("--force", action="store_true", help="replace shards with this prefix already in out_dir")
    args = p.parse_args(argv)
    try:
        glob = args.glob or ("**/*.parquet" if args.corpus == "hf" else "**/*.txt")
        cfg = DataConfig(corpus=args.corpus, path=args.path, glob=glob, hf_format=args.hf_format,
                         text_field=args.text_field, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                         tokenizer_file=args.tokenizer_file, val_fraction=args.val_fraction, cache_dir=args.cache_dir)
        out = Path(args.out_dir)
        old = sorted(out.glob(f"{args.prefix}_train_*.bin")) + sorted(out.glob(f"{args.prefix}_val_*.bin"))
        if old and not args.force:
            raise DataError(f"{out} already holds {len(old)} shards named {args.prefix}_*; use --force to replace them")
        for f in old:
            f.unlink()
        cache = cache_root(cfg.cache_dir)
        source = source_for(cfg, cache)
        tokenizer = make_tokenizer(cfg, source, cache)
        meta = write_token_shards(source, tokenizer, out, cfg.val_fraction, f"{args.prefix}_", args.shard_tokens)
        overrides = f"data=shards path={out}"
        if isinstance(tokenizer, bpe.HFTokenizer):
            tokenizer.save(out / "tokenizer.json")
            if cfg.tokenizer == "bpe":
                overrides += f" data.vocab_size={cfg.vocab_size}"
        else:
            overrides += " data.tokenizer=bytes"
        if args.prefix != "data":
            overrides += f" 'data.train_glob={args.prefix}_train_*.bin' 'data.val_glob={args.prefix}_val_*.bin'"
    except (ConfigError, DataError) as e:
        print(f"qatlab-shards: error: {e}", file=sys.stderr)
        return 2
    print(f"{source.name} ({meta['n_bytes']} bytes) -> {out}: {len(meta['train'])} train shards "
          f"({meta['train_tokens']} tokens), {len(meta['val'])} val shards ({meta['val_tokens']} tokens), "
          f"tokenizer {tokenizer.name}")
    print(f"train on them: qatlab {overrides}")
    return 0


if __name__ == "__main__":  # python -m qat_lab.data.prepare
    raise SystemExit(main())
