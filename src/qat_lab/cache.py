"""Where qat_lab keeps what it can recompute: trained tokenizers and token shards (data/), this
machine's matmul rate (machine.py) and the analysis's fitted laws (analysis/fit_cache.py).

One root for all of them, so one setting moves (or clears) every cache: an explicit folder, else
$QAT_LAB_CACHE, else ~/.cache/qat_lab.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(override: str | os.PathLike | None = None) -> Path:
    """`override` (e.g. data.cache_dir), else $QAT_LAB_CACHE, else ~/.cache/qat_lab."""
    return Path(override or os.environ.get("QAT_LAB_CACHE") or "~/.cache/qat_lab").expanduser()
