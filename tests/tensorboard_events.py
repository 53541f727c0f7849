"""Read TensorBoard event files in the tests (what logger=tensorboard wrote), with tensorboardX's
protobuf classes: each file is TFRecord framed (uint64 length, uint32 CRC of it, the Event
message, uint32 CRC of it); the CRCs are not checked. `scalars` applies TensorBoard's purge rule:
a SessionLog START at step s (a resumed writer's purge_step) drops the earlier events at steps >= s.
"""

from __future__ import annotations

import struct
from pathlib import Path


def events(path: str | Path) -> list:
    from tensorboardX.proto import event_pb2

    data, pos, out = Path(path).read_bytes(), 0, []
    while pos + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        pos += 12
        event = event_pb2.Event()
        event.ParseFromString(data[pos:pos + length])
        out.append(event)
        pos += length + 4
    return out


def event_files(folder: str | Path) -> list[Path]:
    return sorted(Path(folder).glob("events.out.tfevents.*"))


def scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] in the order written, across the folder's event files."""
    from tensorboardX.proto.event_pb2 import SessionLog

    out: dict[str, list[tuple[int, float]]] = {}
    for path in event_files(folder):
        for event in events(path):
            if event.HasField("session_log") and event.session_log.status == SessionLog.START:
                out = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in out.items()}
            elif event.HasField("summary"):
                for value in event.summary.value:
                    out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out
