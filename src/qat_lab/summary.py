"""The table a sweep ends with: one row per run, read back from the run records.

Printed when a multirun ends (a Hydra callback, so it works with any launcher: the records are
read from the sweep dir, not from memory) and written to <sweep dir>/summary.md. Columns: the
named axes that vary (bits and warmdown always), then any other config key that varies
(records.identity.extra_axes: `optim.matrix_lr`, a second corpus with the same folder name, ...).
The penalty is P_b = L(bits=b) - L(bits=16) in val loss (nats/token) against the FP16 run equal on
every other key (records.identity.penalties, the same rule qatlab-analyze uses); blank where there
is none.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from qat_lab.errors import RunRecordError
from qat_lab.records import find_records, read_record
from qat_lab.records.identity import ANY, extra_axes, penalties, run_identity, shown, usable, why_unpaired
from qat_lab.validation import is_number

ALWAYS_SHOWN = ("bits", "warmdown")
LAST_SWEEP: dict[str, Any] = {}
"""Status counts of the last sweep summarised in this process (the CLI's exit code reads it)."""


def load_sweep(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """(records, problems): every readable run record under sweep_dir, and one line per bad one."""
    records, problems = [], []
    for path in find_records(sweep_dir):
        try:
            records.append(read_record(path))
        except RunRecordError as e:
            problems.append(str(e))
    return records, problems


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or v is ANY or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return shown(v)  # a content fingerprint: its first characters tell two corpora apart


def _fmt_key(v: Any) -> str:
    """An extra config key's value as it was set (0.005 stays 0.005), fingerprints shortened."""
    return "-" if v is None or v is ANY else shown(v)


def _sort_key(v: Any) -> tuple:
    return (0, v, "") if is_number(v, finite=False) else (1, 0, repr(v))


def sweep_table(records: list[dict]) -> str:
    """A Markdown table of the runs, varying axes first, sorted by those axes."""
    if not records:
        return "(no run records)"
    identities = [run_identity(r) for r in records]
    named = [r["axes"] for r in records]
    axis_names = list(dict.fromkeys(k for r in records for k in r["axes"]))
    # "-" is "not applicable" (qat_start of an FP16 run) and a missing axis is unknown (the record
    # of a job killed before it started states only some): neither makes an axis vary.
    varying = [a for a in axis_names if a in ALWAYS_SHOWN
               or len({repr(r["axes"][a]) for r in records if r["axes"].get(a, "-") != "-"}) > 1]
    extra = extra_axes(identities, named)

    def value(i: int, col: str) -> Any:
        return records[i]["axes"].get(col) if col in axis_names else identities[i].get(col)

    columns = varying + extra
    order = sorted(range(len(records)), key=lambda i: tuple(_sort_key(value(i, c)) for c in columns))
    pen = penalties(records)
    head = [*columns, "status", "val_loss", "val_bpb", "penalty", "latent_bpb", "grid_dist", "wall_s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in order:
        r = records[i]
        res, timing = r.get("results", {}), r.get("timing", {})
        row = [_fmt(value(i, c)) if c in varying else _fmt_key(value(i, c)) for c in columns] + [
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
    pen = penalties(records)
    missing = [i for i, (r, p) in enumerate(zip(records, pen)) if p is None and usable(r) and r["axes"].get("bits") != 16]
    text = [f"# Sweep {Path(sweep_dir).name}", "", sweep_table(records), ""]
    text.append("runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "runs: none")
    if unigram:
        text.append(f"unigram baseline on the val split: {', '.join(map(str, unigram))} bpb "
                    "(a model that learned nothing beyond byte frequencies)")
    text.append("penalty = val_loss(bits) - val_loss(bits=16), nats/token, against the bits=16 run equal on every "
                "other setting; grid_dist = weight-to-grid distance at the run's bits (probe bits for 16), "
                "0.25 = uniform")
    if missing:
        identities, ok = [run_identity(r) for r in records], [usable(r) for r in records]
        reason = why_unpaired(identities[missing[0]], identities, ok)
        text.append(f"no penalty for {len(missing)} completed run(s): {reason} (e.g. {records[missing[0]]['job_name']})")
    text.extend(f"unreadable record: {p}" for p in problems)
    return "\n".join(text)


class SweepSummary(Callback):
    """Hydra callback: print the sweep table and write summary.md when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        text = summarise_sweep(sweep_dir)
        try:
            from qat_lab.atomic import atomic_write

            atomic_write(sweep_dir / "summary.md", text + "\n")
        except OSError as e:
            text += f"\n(summary.md not written: {e.strerror or e})"
        print("\n" + text + f"\n\nrecords and summary: {sweep_dir}", flush=True)
