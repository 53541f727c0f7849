"""Markdown pieces of the report: numbers, p-values, tables, images, JSON-ready values.

Tables are written here rather than by pandas.DataFrame.to_markdown, which needs the `tabulate`
package (not a dependency); a cell's '|' is escaped so that a label cannot break a row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from qat_lab.analysis import plots
from qat_lab.records.identity import ANY

def num(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, (float, np.floating)):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"
    return str(v)


def sig(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.{digits}g}"


def pval(p: Any) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<1e-4" if p < 1e-4 else f"{p:.3g}"


def mean_sd(mean: float, sd: float, n: int, digits: int = 4) -> str:
    if n == 0 or mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f} (n={n})" if n > 1 else f"{mean:.{digits}f} (n=1)"


def md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plain(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to null, tuple keys to strings, ANY to '*'."""
    if obj is ANY:
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    return obj


def image(path: Path | None, caption: str) -> list[str]:
    return [f"![{caption}]({path.name})", "", f"*{caption}*", ""] if path else []


def figures(drawn: plots.Drawn | None, caption: str, what: str) -> list[str]:
    """Every figure of one kind, captioned, plus the note on what it leaves out (`what`: 'panels')."""
    if not drawn:
        return []
    out = [line for p in drawn.paths for line in image(p, caption)]
    return out + ([drawn.note(what), ""] if drawn.note(what) else [])
