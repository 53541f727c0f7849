"""Run identity: which runs are the same experiment, and which pair (docs/analysis.md, "Identity").

Two runs are the same point of a study when their *resolved configs* agree, after three changes:

1. Bookkeeping keys are removed (BOOKKEEPING): where files go and how progress is shown, how
   often things are measured or saved, when a run would be stopped as diverged (a completed run
   never met those limits), and how the natural-gradient step is computed (chunking, memory):
   none of them changes the trained model.
2. Data is identified by content, not by path: data.path / glob / tokenizer_file (and the
   top-level `path`) are replaced by the corpus fingerprint and the tokenizer's SHA-256 from the
   record's `data` facts. Two folders called `corp` with different text are different data; the
   same text in two places is the same data.
3. Mirrors of a sweep axis are dropped (schedule.warmdown is `warmdown`, quant.bits is `bits`),
   `model.name` / `optim.name` are called `model` / `optim`, and `steps` is the run's actual
   length (trainer.steps before a token budget resized it is dropped).

At bits=16 nothing is fake-quantised, so the quantiser's settings (quant.*, except probe_bits,
the grid an FP16 run is measured on) cannot change the run: they become ANY, which matches every
value. That is what lets one FP16 run be the baseline of every quantiser variant of a cell.

The one pairing rule of the project lives here too: a run's FP16 partner is the completed
bits=16 run equal to it on every key but `bits` (fp16_partners). The end-of-sweep summary
(qat_lab.summary) and qatlab-analyze both pair through it.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Iterable

FP_BITS = 16

BOOKKEEPING = (
    # where things are written and what is shown
    "logger", "trainer.progress", "trainer.threads", "trainer.log_every", "trainer.quiet", "data.cache_dir",
    # when things are measured or saved: the trained weights do not depend on it
    "trainer.checkpoint_every", "trainer.val_every", "trainer.val_batches", "trainer.grid_every",
    # when a run is stopped as diverged: a completed run never met these limits
    "trainer.max_loss", "trainer.divergence_grace",
    # how the natural-gradient step is computed (memory), not what it is
    "optim.chunk_size", "optim.jacobian", "optim.memory_budget_mb",
    # replaced by content fingerprints (data.fingerprint, data.tokenizer_sha256)
    "path", "data.path", "data.glob", "data.tokenizer_file", "data.train_glob", "data.val_glob",
    "data.corpus",
    # mirrors of top-level axes, and the requested length before a token budget resized it
    "schedule.warmdown", "quant.bits", "trainer.steps",
)
"""Config keys (and their subtrees) that are not part of a run's identity."""

RENAMED = {"model.name": "model", "optim.name": "optim"}
DATA_FACTS = {"fingerprint": "data.fingerprint", "tokenizer_sha256": "data.tokenizer_sha256"}
"""record["data"] facts that identify the corpus and tokenizer by content."""
FP_RELEVANT_QUANT = ("quant.probe_bits",)
"""The only quant.* key that shapes an FP16 run's record (its grid-distance probe)."""
FP_IRRELEVANT = ("qat_start",)
"""Named axes that, like quant.*, say nothing about an FP16 run (when its QAT would start)."""
ALIASES = {
    "tokenizer": ("data.tokenizer", "data.vocab_size", "data.tokenizer_sha256", "data.tokenizer_train_bytes"),
    "data": ("data",),
    "seq_len": ("data.seq_len",),
    "batch_size": ("data.batch_size",),
    "steps": ("steps", "trainer.tokens_per_param"),
    "qat_start": ("qat_start", "quant.start", "quant.start_lr_below"),
}
"""Named axes of the run record that stand for several identity keys (for --compare and cells)."""


class _Any:
    """The wildcard: equal to every value in matches(); shown as '*'."""

    def __repr__(self) -> str:
        return "*"

    def __reduce__(self):  # one instance, also through pickling (forked analysis workers)
        return "ANY"


ANY = _Any()


def canonical(value: Any) -> Any:
    """A hashable, type-stable value: 16.0 -> 16, [0.9, 0.95] -> (0.9, 0.95), NaN -> 'nan'."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, _Any)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, (list, tuple)):
        return tuple(canonical(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), canonical(v)) for k, v in value.items()))
    return str(value)


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{'trainer': {'steps': 150}} -> {'trainer.steps': 150} (an empty dict is kept as a value)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def under(key: str, prefixes: Iterable[str]) -> bool:
    """True if key is one of `prefixes` or inside one of their subtrees."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def run_identity(record: dict[str, Any]) -> dict[str, Any]:
    """The identity of a run (see the module docstring): flat key -> canonical value.

    The record's named axes (bits, warmdown, model, schedule, ...) are always part of it; the
    resolved config adds every other setting. Records without a config (W&B runs logged without
    it, hand-made records) have their named axes only. The `data` axis is a readable label: when
    the record carries the corpus fingerprint, the fingerprint identifies the data instead.
    """
    config = record.get("config") or {}
    axes = record.get("axes") or {}
    ident = {k: canonical(v) for k, v in axes.items()}
    for key, value in flatten(config).items():
        if under(key, BOOKKEEPING) or key.startswith("_") or key.endswith("._target_"):
            continue
        ident[RENAMED.get(key, key)] = canonical(value)
    if "steps" in axes:
        ident["steps"] = canonical(axes["steps"])
    data = record.get("data") or {}
    for fact, key in DATA_FACTS.items():
        if data.get(fact) is not None:
            ident[key] = data[fact]
    if "data.fingerprint" in ident:
        ident.pop("data", None)
    if ident.get("bits") == FP_BITS:
        for key in ident:
            if (key.startswith("quant.") and key not in FP_RELEVANT_QUANT) or key in FP_IRRELEVANT:
                ident[key] = ANY
    return ident


def config_fingerprint(config: dict[str, Any], data_facts: dict[str, Any] | None = None) -> str:
    """A short hash of a job's identity from its resolved config (and data facts): two jobs with
    the same fingerprint train the same model. Checkpoints carry it, so a checkpoint left by
    another configuration is never resumed."""
    ident = run_identity({"config": config, "data": data_facts or {}})
    blob = json.dumps(sorted((k, repr(v)) for k, v in ident.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def matches(a: dict[str, Any], b: dict[str, Any], ignore: Iterable[str] = ()) -> bool:
    """a and b agree on every key outside `ignore` (a missing key is a value of its own; ANY
    matches everything)."""
    ignore = tuple(ignore)
    for key in a.keys() | b.keys():
        if under(key, ignore):
            continue
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        if x is ANY or y is ANY:
            continue
        if x != y:
            return False
    return True


_MISSING = ("<absent>",)


def expand(keys: Iterable[str]) -> tuple[str, ...]:
    """Named axes to the identity keys they stand for ('tokenizer' -> data.tokenizer, ...)."""
    out: list[str] = []
    for key in keys:
        out.extend(ALIASES.get(key, (key,)))
    return tuple(out)


def fp16_partners(identities: list[dict[str, Any]], usable: list[bool]) -> list[int | None]:
    """Index of each run's FP16 partner: a usable bits=16 run that matches it on every key but
    `bits`, or None. An FP16 run is its own partner (penalty 0). Where several match, the first
    whose quantiser settings are equal (not just ANY) wins, else the first."""
    fp = [i for i, (ident, ok) in enumerate(zip(identities, usable)) if ok and ident.get("bits") == FP_BITS]
    out: list[int | None] = []
    for ident in identities:
        if ident.get("bits") == FP_BITS:
            out.append(next((j for j in fp if identities[j] is ident), None))
            continue
        found = [j for j in fp if matches(ident, identities[j], ignore=("bits",))]
        out.append(found[0] if found else None)
    return out


def same_quantiser(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether a QAT run and its FP16 partner were measured with the same quantiser settings
    (the FP16 run's own quant.* values, read from its config, not the ANY of its identity)."""
    return all(a.get(k) == b.get(k) for k in a.keys() | b.keys() if k.startswith("quant."))


def varying_keys(identities: list[dict[str, Any]]) -> list[str]:
    """Identity keys that take more than one value among these runs (ANY counts as no value)."""
    values: dict[str, set] = {}
    for ident in identities:
        for key in identities[0].keys() | ident.keys():
            v = ident.get(key, _MISSING)
            if v is not ANY:
                values.setdefault(key, set()).add(repr(v))
    return sorted(k for k, v in values.items() if len(v) > 1)


def extra_axes(identities: list[dict[str, Any]], named: list[dict[str, Any]]) -> list[str]:
    """Varying identity keys that the named axes do not explain: keys that take two values among
    runs whose named axes are all equal (`optim.matrix_lr`, `quant.scale_rule`,
    `data.fingerprint` for two corpora in folders of the same name). These are the extra columns
    of the sweep table, runs.csv and cells.csv."""
    groups: dict[tuple, list[int]] = {}
    for i, axes in enumerate(named):
        groups.setdefault(tuple(sorted((k, repr(canonical(v))) for k, v in axes.items())), []).append(i)
    keys = set(varying_keys(identities))
    extra = []
    for key in sorted(keys):
        if key in named[0] if named else False:
            continue
        for members in groups.values():
            seen = {repr(identities[i].get(key, _MISSING)) for i in members if identities[i].get(key) is not ANY}
            if len(seen) > 1:
                extra.append(key)
                break
    return extra


def usable(record: dict[str, Any]) -> bool:
    """Completed with a finite final val loss: the only runs statistics (and baselines) use."""
    loss = (record.get("results") or {}).get("val_loss")
    return record.get("status") == "completed" and isinstance(loss, (int, float)) and math.isfinite(loss)


def penalties(records: list[dict[str, Any]]) -> list[float | None]:
    """P_b = L(b) - L(16) of each record against its FP16 partner (fp16_partners), or None."""
    identities = [run_identity(r) for r in records]
    ok = [usable(r) for r in records]
    out: list[float | None] = []
    for r, good, j in zip(records, ok, fp16_partners(identities, ok)):
        out.append(r["results"]["val_loss"] - records[j]["results"]["val_loss"] if good and j is not None else None)
    return out
