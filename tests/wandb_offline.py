"""Read an offline W&B run file (run-<id>.wandb) in the tests, to check what qatlab sent to W&B.

The file is W&B's transaction log: a 7-byte header (":W&B", magic 0xBEE1, version 0), then
LevelDB-log framed records (32 KiB blocks; each chunk has a 7-byte header: checksum, length,
type FULL/FIRST/MIDDLE/LAST) holding protobuf `Record` messages (wandb.proto.wandb_internal_pb2).
wandb 0.31 dropped its Python reader of this format (DESIGN.md, W&B facts), so the tests carry
this small one; it reads, never writes, and checks nothing but the framing.
"""

from __future__ import annotations

import json
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # the block's tail is padding
            pos += left_in_block
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(pending)
            out.append(rec)
            pending = b""
    return out


def summary(path: str | Path) -> dict:
    """The run summary as the last summary records left it (key -> JSON value)."""
    out: dict = {}
    for rec in records(path):
        if rec.WhichOneof("record_type") == "summary":
            for item in rec.summary.update:
                key = "/".join(item.nested_key) if item.nested_key else item.key
                out[key] = json.loads(item.value_json)
    return out


def exit_code(path: str | Path) -> int | None:
    codes = [rec.exit.exit_code for rec in records(path) if rec.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None


def tags(path: str | Path) -> list[str]:
    """The run's tags as last set (the run record, then any later run update)."""
    found: list[str] = []
    for rec in records(path):
        if rec.WhichOneof("record_type") == "run":
            found = list(rec.run.tags)
    return found
