"""Pull runs back: local run records (primary) or W&B runs, into one list of records and one table.

Both sources end up in the same shape, a schema-v1 run record (docs/run_record.md) plus a way to
fetch the per-step history (the columns of metrics.csv), so everything downstream is blind to
where a run came from. Nothing is dropped here: failed, diverged, running and interrupted runs are
loaded like any other and only marked unusable later (coverage.py), and a record that cannot be
read is reported by path in `RunSet.problems` and skipped.
"""

from __future__ import annotations

import functools
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pandas as pd

from qat_lab import records as runs
from qat_lab.errors import RunRecordError
from qat_lab.records.content import sections_from_summary
from qat_lab.records.identity import ANY, digest
from qat_lab.validation import build_dataclass


class AnalysisInputError(ValueError):
    """Input the analysis cannot start from (no such path, no records at all); the CLI exits 2."""


HISTORY_COLUMNS = ("step", "train_loss", "val_loss", "val_bpb", "grid_distance")
"""metrics.csv columns every history has (plus one lr/<group> column per parameter group)."""


@dataclass
class Run:
    run_id: str
    """Unique: the run.json path, or wandb:<entity>/<project>/<id>."""
    record: dict[str, Any]
    """A schema-v1 shaped run record (W&B runs are mapped into the same shape)."""
    load_history: Callable[[], pd.DataFrame | None]


@dataclass
class RunSet:
    runs: list[Run]
    problems: list[str] = field(default_factory=list)
    """One line per record that could not be read (path and reason)."""
    inputs: list[str] = field(default_factory=list)
    """What was read: sweep dirs or the W&B path and group."""
    expected_jobs: dict[str, int] = field(default_factory=dict)
    """Jobs each sweep's multirun.yaml describes (sweep_id -> count), where it could be read."""
    _histories: dict[str, pd.DataFrame | None] = field(default_factory=dict, repr=False)
    _by_id: dict[str, Run] = field(default_factory=dict, repr=False)

    def history(self, run_id: str) -> pd.DataFrame | None:
        """The per-step history of a run (cached); None if it has none or it cannot be read."""
        if run_id not in self._histories:
            if len(self._by_id) != len(self.runs):  # runs are appended while loading
                self._by_id = {r.run_id: r for r in self.runs}
            run = self._by_id[run_id]
            try:
                self._histories[run_id] = run.load_history()
            except (OSError, ValueError) as e:
                self.problems.append(f"{run_id}: unreadable history ({type(e).__name__}: {e})")
                self._histories[run_id] = None
        return self._histories[run_id]


# ---------------------------------------------------------------------------------------- local

def read_metrics_csv(path: Path) -> pd.DataFrame:
    """metrics.csv as floats (empty cell -> NaN); ValueError if a cell is not a number.

    Every column is numeric and nothing is quoted, so the fast path fills the empty cells with
    'nan' and hands the whole text to numpy's parser in one call: with thousands of small files,
    per-call overheads (pandas' reader, a float() per cell) are what costs. Anything irregular
    (a last line cut short by a run still writing, a non-numeric cell) goes to pandas.read_csv,
    which pads short lines with NaN and raises ValueError on text or on a line that is too long.
    """
    text = path.read_text().replace("\r\n", "\n")
    head, _, body = text.partition("\n")
    columns = head.split(",")
    filled = body.replace(",\n", ",nan\n").replace("\n,", "\nnan,")
    filled = filled.replace(",,", ",nan,").replace(",,", ",nan,")  # two passes cover any run of empties
    if filled.startswith(","):
        filled = "nan" + filled
    if filled.endswith(","):
        filled += "nan"
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy's signal that it stopped at text
        try:
            values = np.fromstring(filled.replace("\n", ","), sep=",") if filled.strip() else np.empty(0)
        except (DeprecationWarning, ValueError):
            values = None
    if values is None or values.size % len(columns) or values.size // len(columns) != body.count("\n") + (
            not body.endswith("\n") and bool(body)):
        # pandas would read a first row longer than the header as an index: refuse it first.
        # pandas' own errors (ParserError, a bad float) are ValueErrors, which RunSet.history reports.
        widest = max((line.count(",") + 1 for line in body.splitlines()), default=0)
        if widest > len(columns):
            raise ValueError(f"a row has {widest} fields, the header {len(columns)}")
        return pd.read_csv(io.StringIO(text), dtype=float, skip_blank_lines=True)
    return pd.DataFrame(values.reshape(-1, len(columns)), columns=columns)


def _history_loader(path: Path) -> Callable[[], pd.DataFrame | None]:
    return lambda: read_metrics_csv(path) if path.exists() else None


def _expected_jobs(sweep_dir: Path) -> int | None:
    """Jobs in a sweep according to its multirun.yaml: the product of the sweep's overrides, those
    an experiment sets (hydra.sweeper.params) and the command line's, which win per key as in
    Hydra's basic sweeper.

    A sweep that is still running has records only for the jobs that started, so this is the only
    way to know how many are still to come.
    """
    path = sweep_dir / "multirun.yaml"
    if not path.exists():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra = OmegaConf.load(path).hydra
        node = OmegaConf.select(hydra, "sweeper.params")
        params = OmegaConf.to_container(node) if node is not None else {}
        lines = [f"{k}={v}" for k, v in params.items()] + list(hydra.overrides.task)
        by_key = {o.get_key_element(): o for o in OverridesParser.create().parse_overrides(lines)}
        count = 1
        for o in by_key.values():
            count *= len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
        return count
    except Exception:  # an unusual multirun.yaml only costs the job count, never the analysis
        return None


def load_local(paths: Iterable[str | Path]) -> RunSet:
    """Every run record under each path (a sweep dir, a dir of sweeps or one job dir)."""
    runset = RunSet(runs=[])
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.exists():
            raise AnalysisInputError(f"{given}: no such file or directory")
        runset.inputs.append(str(given))
        record_paths = [root] if root.is_file() else runs.find_records(root)
        # A sweep dir, or a dir of sweeps: each sweep's multirun.yaml says how many jobs to expect.
        # Sweeps are known by the dir they are in now (a renamed or copied sweep is analysed as it
        # is), never by the sweep id its records were written with.
        sweep_dirs = [d for d in ([root, *root.iterdir()] if root.is_dir() else []) if (d / "multirun.yaml").is_file()]
        for sweep_dir in sweep_dirs:
            count = _expected_jobs(sweep_dir)
            if count is not None:
                runset.expected_jobs[sweep_dir.name] = count
        sweep_of = {d.resolve(): d.name for d in sweep_dirs}
        for path in record_paths:
            path = path.resolve()
            if path in seen:  # the same sweep named twice, or a sweep and a dir inside it
                continue
            seen.add(path)
            try:
                record = runs.read_record(path)
            except RunRecordError as e:
                runset.problems.append(str(e))
                continue
            # The history lives beside the record (the record's job_dir is stale if the sweep moved).
            history = path.parent / record.get("history_file", runs.HISTORY_NAME)
            holder = next((sweep_of[d] for d in path.parents if d in sweep_of), None)
            if holder is not None and holder != record.get("sweep_id"):
                record = {**record, "sweep_id": holder, "stored_sweep_id": record.get("sweep_id")}
            runset.runs.append(Run(run_id=str(path), record=record, load_history=_history_loader(history)))
    return runset


# ---------------------------------------------------------------------------------------- W&B

WANDB_STATES = {"finished": "completed", "running": "running", "pending": "running",
                "crashed": "failed", "failed": "failed", "killed": "interrupted"}
"""W&B run state -> record status. A finished run without a finite final evaluation is `diverged`
(qatlab finishes the W&B run normally when its divergence guard stops training)."""


def _plain(value: Any) -> Any:
    # Older W&B API versions return config entries as {"value": v, "desc": ...}.
    if isinstance(value, dict) and set(value) <= {"value", "desc"} and "value" in value:
        return value["value"]
    return value


def history_from_rows(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """W&B history rows -> the metrics.csv layout (one row per optimiser step).

    qatlab logs every row with `step=t`, which Lightning's WandbLogger stores as
    `trainer/global_step`; `_step` is W&B's own counter and only a fallback.
    """
    out = []
    for row in rows:
        step = row.get("trainer/global_step", row.get("step", row.get("_step")))
        if step is None:
            continue
        keep = {k: v for k, v in row.items() if k in HISTORY_COLUMNS or k.startswith("lr/")}
        keep["step"] = int(step)
        out.append(keep)
    if not out:
        return pd.DataFrame(columns=list(HISTORY_COLUMNS))
    frame = pd.DataFrame(out)
    # Should one step arrive in several rows, merge them (first value of each column).
    return frame.groupby("step", as_index=False, sort=True).first()


def _non_embedding_from_config(model_cfg: dict[str, Any]) -> int | None:
    """Count the non-embedding parameters of a model config (shapes only, on the meta device)."""
    return _count_non_embedding(json.dumps(model_cfg, sort_keys=True))


@functools.lru_cache(maxsize=64)
def _count_non_embedding(model_json: str) -> int | None:
    # Cached by config: building even a meta-device model costs ~0.5 s, and a sweep has few models.
    try:
        import torch

        from qat_lab.models.gpt import GPT, GPTConfig, count_parameters

        model = build_dataclass(json.loads(model_json), "model", GPTConfig)
        with torch.device("meta"):
            # Non-embedding counts do not depend on the vocabulary (embedding and head are excluded).
            return count_parameters(GPT(model, vocab_size=256))["non_embedding"]
    except Exception:
        return None


FLOAT_AXES = ("warmdown", "lr_mult")
"""Axes the record schema holds as floats; W&B's JSON turns 1.0 into 1, so they are made floats again."""


def _summary(run: Any) -> dict[str, Any]:
    """The W&B run summary as a plain dict (the public API's summary is a mapping, not a dict)."""
    summary = run.summary
    return dict(summary.items()) if hasattr(summary, "items") else dict(summary)


def _results_from_history(history: pd.DataFrame, steps: Any, cfg: dict[str, Any]) -> dict[str, Any]:
    """Final results read off the history (for runs whose summary lacks them: older qatlab): the
    final evaluation is the row at step T, the pre-warmdown distance the row at the first warmdown step."""
    final = history[history["step"] == steps] if steps is not None else history.iloc[0:0]

    def final_value(col: str) -> float:
        if col not in final or final[col].isna().all():
            return math.nan
        return float(final[col].dropna().iloc[-1])

    results: dict[str, Any] = {"val_loss": final_value("val_loss"), "val_bpb": final_value("val_bpb"),
                               "grid_distance_final": final_value("grid_distance")}
    train = history.loc[history["step"] < (steps if steps is not None else math.inf)]
    if "train_loss" in train and train["train_loss"].notna().any():
        results["steps_done"] = int(train.loc[train["train_loss"].notna(), "step"].max()) + 1
        results["train_loss_final"] = float(train["train_loss"].dropna().iloc[-1])
    schedule = dict(cfg.get("schedule") or {})
    if schedule and steps is not None and "grid_distance" in history:
        from qat_lab.schedules import ScheduleConfig

        t0 = build_dataclass(schedule, "schedule", ScheduleConfig).warmdown_start(int(steps))
        pre = history.loc[(history["step"] == t0) & history["grid_distance"].notna(), "grid_distance"]
        if t0 < steps and len(pre):
            results["grid_distance_pre_warmdown"] = float(pre.iloc[0])
    return results


def record_from_wandb(run: Any) -> tuple[dict[str, Any], pd.DataFrame]:
    """A W&B run (wandb.Api().runs(...) item) as a run record plus its full history.

    qatlab puts the flat sweep axes and `sweep_id` at the top of the W&B config, the whole
    resolved config under `cfg`, and the record's final state in the run summary
    (records.content.summary_fields: results with latent and PTQ losses, params, data
    fingerprints, divergence, timing, status), which sections_from_summary turns back into the
    record's sections. Runs whose summary lacks them have their results read off the history;
    what neither holds stays missing, never made up.
    """
    config = {k: _plain(v) for k, v in dict(run.config).items()}
    cfg = config.get("cfg") or {}
    axes = {k: v for k, v in config.items() if k not in ("cfg", "sweep_id", "params") and not k.startswith("_")}
    for k in FLOAT_AXES:
        if isinstance(axes.get(k), int) and not isinstance(axes[k], bool):
            axes[k] = float(axes[k])
    history = history_from_rows(run.scan_history())  # not history(): that one is sampled
    summary = _summary(run)
    sections = sections_from_summary(summary)
    results = {**_results_from_history(history, axes.get("steps"), cfg), **(sections.get("results") or {})}
    if "grid_bits" not in results and "bits" in axes:
        from qat_lab.quant.config import QuantConfig

        # The grid a run's distances were measured on, from its quantiser's settings.
        results["grid_bits"] = QuantConfig.of_record(cfg, axes).grid_bits
    status = summary.get("status") or WANDB_STATES.get(str(run.state).lower(), "failed")
    loss = results.get("val_loss")
    if status == "completed" and not (isinstance(loss, (int, float)) and math.isfinite(loss)):
        status = "diverged"
    params = sections.get("params") or {}
    if params.get("non_embedding") is None:
        size = (config.get("params") or {}).get("non_embedding")
        if size is None and cfg.get("model"):
            size = _non_embedding_from_config(cfg["model"])
        params = {**params, "non_embedding": size}
    timing = sections.get("timing") or {}
    if timing.get("wall_s") is None and summary.get("_runtime") is not None:
        # The job's wall time is set after its W&B run has finished; W&B's own runtime stands in.
        timing = {**timing, "wall_s": summary["_runtime"]}
    divergence = sections.get("divergence")
    record = {
        "schema_version": runs.SCHEMA_VERSION, "status": status,
        "sweep_id": config.get("sweep_id") or getattr(run, "group", None), "job_name": getattr(run, "name", run.id),
        "axes": axes, "results": results, "params": params, "data": sections.get("data") or {}, "config": cfg,
        "wandb": {"id": run.id, "state": run.state}, "timing": timing, "error": summary.get("error"),
        "divergence": divergence, "diverged_at_step": (divergence or {}).get("step"),
        "resumed_from_step": summary.get("resumed_from_step"),
    }
    return record, history


def load_wandb(path: str, group: str, api: Any = None) -> RunSet:
    """Every run of one W&B group (a qatlab sweep id). `api` defaults to wandb.Api()."""
    if api is None:
        import wandb

        api = wandb.Api()
    runset = RunSet(runs=[], inputs=[f"wandb:{path} group={group}"])
    for run in api.runs(path, filters={"group": group}):
        run_id = f"wandb:{path}/{run.id}"
        try:
            record, history = record_from_wandb(run)
        except Exception as e:  # one odd run must not stop the pull; it is reported, like a corrupt record
            runset.problems.append(f"{run_id}: unreadable W&B run ({type(e).__name__}: {e})")
            continue
        runset.runs.append(Run(run_id=run_id, record=record, load_history=lambda h=history: h))
    return runset


# ---------------------------------------------------------------------------------------- table

RESULT_COLUMNS = ("val_loss", "val_bpb", "latent_val_loss", "quant_gap", "grid_bits", "grid_distance_pre_warmdown",
                  "grid_distance_final", "steps_done", "train_loss_final")


def axis_names(runset: RunSet) -> list[str]:
    """Every sweep axis any record has, in the order records list them."""
    names: dict[str, None] = {}
    for run in runset.runs:
        names.update(dict.fromkeys(run.record["axes"]))
    return list(names)


def runs_table(runset: RunSet, identities: list[dict[str, Any]], extra: list[str]) -> pd.DataFrame:
    """One row per run: its identity digest, status, every axis and extra key, size, final results.

    Axis values are the record's, except where the run's identity has the wildcard ANY (qat_start
    of an FP16 run): the table holds ANY there, shown as '*'. Extra keys (design.Design.extra)
    take the identity's values: full content fingerprints, canonical numbers.
    """
    rows = []
    for run, ident in zip(runset.runs, identities):
        r = run.record
        res = r.get("results") or {}
        axes = {k: (ANY if ident.get(k) is ANY else v) for k, v in r["axes"].items()}
        row = {"run_id": run.run_id, "sweep_id": r.get("sweep_id"), "job_name": r.get("job_name"), "status": r["status"],
               "identity": digest(ident), **axes, **{k: ident.get(k) for k in extra},
               "size": (r.get("params") or {}).get("non_embedding")}
        for col in RESULT_COLUMNS:
            row[col] = res.get(col)
        # The post-training quantisers of the final weights (METHOD section 9): ptq4_val_loss (RTN),
        # ptq_clip4_val_loss, ptq_gptq4_val_loss, ... at every bit-width the run evaluated.
        for method in ("ptq", "ptq_clip", "ptq_gptq"):
            for bits, ptq in sorted((res.get(method) or {}).items()):
                row[f"{method}{bits}_val_loss"] = (ptq or {}).get("val_loss")
        row["wall_s"] = (r.get("timing") or {}).get("wall_s")
        row["error"] = r.get("error")
        row["diverged_at_step"] = r.get("diverged_at_step")
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in (*RESULT_COLUMNS, "size", "wall_s", *(c for c in table if c.startswith("ptq"))):
        if col in table:
            table[col] = pd.to_numeric(table[col], errors="coerce")
    return table
