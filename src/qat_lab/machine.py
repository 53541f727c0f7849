"""This machine's fp32 matmul rate, measured once and cached: what `qatlab --dry-run` turns a
sweep's FLOPs into hours with.

The rate is the best of a few 2048 x 2048 float32 matmuls (2 n^3 FLOPs each: the size `make
bench` calls the peak) on torch's default threads (the best, not the median: a busy machine only
ever makes a matmul slower), cached in <cache>/machine.json keyed by host, core count and torch version, so later
dry runs need no torch import. CPU training runs at a fraction of it (CPU_MFU, from
docs/benchmarks.md: 26-45% on the CPU presets).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

CPU_MFU = 0.35
"""Model FLOPs utilisation of CPU training, as measured by `make bench` on the CPU presets."""


def _key() -> str:
    from importlib import metadata

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "?"
    return f"{socket.gethostname()}|{os.cpu_count()}|{torch_version}"


def cpu_matmul_rate(cache_dir: Path) -> float:
    """FLOP/s of a 2048 x 2048 fp32 matmul here (measured on first use, then read from the cache)."""
    path = Path(cache_dir) / "machine.json"
    try:
        cached = json.loads(path.read_text())
        if cached.get("key") == _key():
            return float(cached["fp32_matmul_flops"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    import torch

    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm the BLAS thread pool
    times = []
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    rate = 2.0 * n ** 3 / min(times)
    try:
        from qat_lab.atomic import atomic_write

        atomic_write(path, json.dumps({"key": _key(), "fp32_matmul_flops": rate}))
    except OSError:
        pass  # a read-only cache only costs the next dry run a measurement
    return rate
