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

A cosine or constant schedule has no warmdown window, so there `warmdown` is ANY too.

At bits=16 nothing is fake-quantised, so the quantiser's settings (quant.*, except probe_bits,
the grid an FP16 run is measured on) cannot change the run: they become ANY, which matches every
value. That is what lets one FP16 run be the baseline of every quantiser variant of a cell.

The one pairing rule of the project lives here too: a run's FP16 partner is the completed
bits=16 run equal to it on every key but `bits` (fp16_partners; why_unpaired says in words why a
run has none). The end-of-sweep summary (qat_lab.summary) and qatlab-analyze both pair through
it. The grid-distance ratio narrows it with quantiser_settings: an FP16 run's distance was
measured with its own quantiser settings, which its identity leaves as ANY.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Iterable

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

_BOOKKEEPING = frozenset(BOOKKEEPING)
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
    """The wildcard: equal to every value in matches(); shown as '*'.

    It sorts after every other value, so that a table column holding it beside strings or numbers
    (quant.scale_rule of FP16 and QAT runs) can still be sorted and grouped."""

    def __repr__(self) -> str:
        return "*"

    def __reduce__(self):  # one instance, also through pickling (forked analysis workers)
        return "ANY"

    def __lt__(self, other: Any) -> bool:
        return False

    def __gt__(self, other: Any) -> bool:
        return other is not self


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
    if not isinstance(prefixes, (set, frozenset)):
        prefixes = set(prefixes)
    # 'a.b.c' is under 'a', 'a.b' and 'a.b.c': look its own prefixes up instead of scanning the list.
    end = key.find(".")
    while end != -1:
        if key[:end] in prefixes:
            return True
        end = key.find(".", end + 1)
    return key in prefixes


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
        if under(key, _BOOKKEEPING) or key.startswith("_") or key.endswith("._target_"):
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
    if ident.get("schedule.kind") in ("cosine", "constant"):
        ident["warmdown"] = ANY  # these schedules have no warmdown window: it cannot change the run
    if ident.get("bits") == FP_BITS:
        for key in ident:
            if (key.startswith("quant.") and key not in FP_RELEVANT_QUANT) or key in FP_IRRELEVANT:
                ident[key] = ANY
    return ident


def digest(ident: dict[str, Any]) -> str:
    """A short hash of an identity: equal identities (ANY included) give equal digests."""
    blob = json.dumps(sorted((k, repr(v)) for k, v in ident.items()))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_fingerprint(config: dict[str, Any], data_facts: dict[str, Any] | None = None) -> str:
    """A short hash of a job's identity from its resolved config (and data facts): two jobs with
    the same fingerprint train the same model. Checkpoints carry it, so a checkpoint left by
    another configuration is never resumed."""
    return digest(run_identity({"config": config, "data": data_facts or {}}))


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


def _signature(ident: dict[str, Any], wild: frozenset[str]) -> tuple:
    """The keys a partner must equal: every key but `bits` and the wildcard keys `wild`."""
    return tuple(sorted((k, repr(v)) for k, v in ident.items() if k != "bits" and k not in wild and v is not ANY))


def fp16_partners(identities: list[dict[str, Any]], usable: list[bool],
                  accept: Callable[[int, int], bool] | None = None) -> list[int | None]:
    """Index of each run's FP16 partner: the first usable bits=16 run that matches it on every key
    but `bits` (matches(); ANY matches anything), and for which accept(run, partner) holds if
    given, or None. An FP16 run is its own partner (penalty 0).

    Indexed, not pairwise: FP16 runs are filed under the keys they must agree on (all but bits
    and their ANY keys), so each run looks its partners up instead of trying every FP16 run
    (2,000 runs would be a million comparisons)."""
    index: dict[frozenset[str], dict[tuple, list[int]]] = {}
    for j, (ident, ok) in enumerate(zip(identities, usable)):
        if ok and ident.get("bits") == FP_BITS:
            wild = frozenset(k for k, v in ident.items() if v is ANY)
            index.setdefault(wild, {}).setdefault(_signature(ident, wild), []).append(j)
    out: list[int | None] = []
    for i, ident in enumerate(identities):
        if ident.get("bits") == FP_BITS:
            ok = usable[i] and (accept is None or accept(i, i))
            out.append(i if ok else None)
            continue
        found = sorted(j for wild, by_sig in index.items() for j in by_sig.get(_signature(ident, wild), ()))
        out.append(next((j for j in found if accept is None or accept(i, j)), None))
    return out


def why_unpaired(ident: dict[str, Any], identities: list[dict[str, Any]], usable: list[bool]) -> str:
    """Why a quantised run has no FP16 partner, in words: the keys in which the nearest usable
    bits=16 runs differ from it ('no completed bits=16 run with the same optim.matrix_lr'), or
    that its partner exists but was left out, or that there is no bits=16 run at all."""
    fp = [j for j, other in enumerate(identities) if other.get("bits") == FP_BITS]
    if any(matches(ident, identities[j], ignore=("bits",)) for j in fp):
        return "its bits=16 partner was left out (failed, diverged, unfinished or a duplicate)"
    fp = [j for j in fp if usable[j]]
    if not fp:
        return "no completed bits=16 run at all"

    def differing(j: int) -> list[str]:
        other = identities[j]
        return sorted(k for k in ident.keys() | other.keys() if k != "bits"
                      and not (ident.get(k) is ANY or other.get(k) is ANY)
                      and ident.get(k, _MISSING) != other.get(k, _MISSING))

    nearest = min((differing(j) for j in fp), key=len)
    shown = ", ".join(nearest[:3]) + (f" (+{len(nearest) - 3} more)" if len(nearest) > 3 else "")
    return f"no completed bits=16 run with the same {shown}"


GRID_EXEMPT_QUANT = ("quant.bits", "quant.probe_bits", "quant.start", "quant.start_lr_below")
"""quant.* keys that do not change how a grid distance is measured: the grid's bit-width is
compared separately (results.grid_bits), and when QAT starts changes the weights, not the ruler."""


def quantiser_settings(config: dict[str, Any]) -> tuple:
    """The quantiser settings a run's grid distance was measured with, from its resolved config
    (an FP16 run's own values: its identity has ANY there), hashable."""
    quant = flatten({"quant": (config or {}).get("quant") or {}})
    return tuple(sorted((k, canonical(v)) for k, v in quant.items() if k not in GRID_EXEMPT_QUANT))


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


FINGERPRINT_SHOWN = 10
"""Characters of a content fingerprint shown in tables: enough to tell two corpora apart."""


def shown(value: Any) -> str:
    """An identity value as tables show it: fingerprints shortened, ANY as '*'."""
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:FINGERPRINT_SHOWN]
    return str(value)
