"""The table a sweep ends with: one row per run, read back from the run records.

Printed when a multirun ends (a Hydra callback, so it works with any launcher: the records are
read from the sweep dir, not from memory) and written to <sweep dir>/summary.md.
The penalty is P_b = L(bits=b) - L(bits=16) in val loss (nats/token), paired on every other axis
(METHOD section 6); it is blank where the bits=16 partner is missing or did not complete.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qat_lab import runs
from qat_lab.errors import RunRecordError
from qat_lab.quant import FP_BITS

ALWAYS_SHOWN = ("bits", "warmdown")
LAST_SWEEP: dict[str, Any] = {}
"""Status counts of the last sweep summarised in this process (the CLI's exit code reads it)."""


def load_sweep(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(records, problems): every readable run record under sweep_dir, and one line per bad one."""
    records, problems = [], []
    for path in runs.find_records(sweep_dir):
        try:
            records.append(runs.read_record(path))
        except RunRecordError as e:
            problems.append(str(e))
    return records, problems


def _pair_key(axes: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in axes.items() if k != "bits"))


def fp_partners(records: list[dict]) -> list[int | None]:
    """Index of each record's completed bits=16 partner (equal on every other axis), or None.

    The project's one pairing rule: the penalties below and qat_lab.analysis (penalties, grid
    distance ratios) both pair through it.
    """
    fp = {_pair_key(r["axes"]): i for i, r in enumerate(records)
          if r["axes"]["bits"] == FP_BITS and r["status"] == "completed"}
    return [fp.get(_pair_key(r["axes"])) for r in records]


def penalties(records: list[dict]) -> list[float | None]:
    """Penalty of each record against its bits=16 partner (same everything else), or None."""
    out = []
    for r, j in zip(records, fp_partners(records)):
        ok = r["status"] == "completed" and j is not None
        out.append(r["results"]["val_loss"] - records[j]["results"]["val_loss"] if ok else None)
    return out


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def sweep_table(records: list[dict]) -> str:
    """A Markdown table of the runs, varying axes first, sorted by those axes."""
    if not records:
        return "(no run records)"
    axis_names = list(records[0]["axes"])
    varying = [a for a in axis_names if a in ALWAYS_SHOWN or len({repr(r["axes"].get(a)) for r in records}) > 1]
    order = sorted(range(len(records)), key=lambda i: tuple(repr(records[i]["axes"].get(a)) if a not in ALWAYS_SHOWN
                                                            else records[i]["axes"].get(a) for a in varying))
    pen = penalties(records)
    head = [*varying, "status", "val_loss", "val_bpb", "penalty", "latent_bpb", "grid_dist", "wall_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in order:
        r = records[i]
        res, timing = r.get("results", {}), r.get("timing", {})
        row = [_fmt(r["axes"].get(a)) for a in varying] + [
            r["status"], _fmt(res.get("val_loss")), _fmt(res.get("val_bpb")),
            _fmt(pen[i], 4) if pen[i] is not None else "-", _fmt(res.get("latent_val_bpb")),
            _fmt(res.get("grid_distance_final")), _fmt(timing.get("wall_s"), 1),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summarise_sweep(sweep_dir: str | Path) -> str:
    records, problems = load_sweep(sweep_dir)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    LAST_SWEEP.clear()
    LAST_SWEEP.update(counts=counts, problems=problems, sweep_dir=str(sweep_dir))
    unigram = sorted({round(r["results"]["unigram_val_bpb"], 3) for r in records
                      if r.get("results", {}).get("unigram_val_bpb") is not None})
    text = [f"# Sweep {Path(sweep_dir).name}", "", sweep_table(records), ""]
    text.append("runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "runs: none")
    if unigram:
        text.append(f"unigram baseline on the val split: {', '.join(map(str, unigram))} bpb "
                    "(a model that learned nothing beyond byte frequencies)")
    text.append("penalty = val_loss(bits) - val_loss(bits=16), nats/token, paired on every other axis; "
                "grid_dist = weight-to-grid distance at the run's bits (probe bits for 16), 0.25 = uniform")
    text.extend(f"unreadable record: {p}" for p in problems)
    return "\n".join(text)


class SweepSummary(Callback):
    """Hydra callback: print the sweep table and write summary.md when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        text = summarise_sweep(sweep_dir)
        (sweep_dir / "summary.md").write_text(text + "\n")
        print("\n" + text + f"\n\nrecords and summary: {sweep_dir}", flush=True)
