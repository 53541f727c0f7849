"""The design of a study: which keys tell runs apart, which one is compared, what a cell holds fixed.

A run is known by its identity (qat_lab.records.identity: the resolved config minus bookkeeping,
data by content). The runs table shows it as columns: the record's named axes (bits, warmdown,
model, ...) plus one column per *extra* key, a config key that varies where the named axes do
not (`optim.matrix_lr`, `quant.scale_rule`, `data.fingerprint` for two corpora in folders of the
same name). Named axes and extra keys together determine the identity, so grouping by these
columns is grouping by identity.

`--compare KEY` (default warmdown) chooses the key whose values are compared inside a cell
(METHOD section 7, "Any axis"): a cell is every key except KEY, the keys under it (`optim.*` for
optim), the named axes that stand for it (`qat_start` for quant.start) and the seed.

FP16 runs have the wildcard ANY where a key cannot change them (quant.*, qat_start): such a cell
belongs to every group of cells it matches (bit_groups), so one FP16 baseline serves every
quantiser variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from qat_lab.analysis.load import AnalysisInputError
from qat_lab.records import identity
from qat_lab.records.identity import ANY

CELL_ID = "cell"
"""The runs table's and cells table's cell label column."""
NOT_COMPARABLE = {
    "seed": "seed is the replicate every comparison pairs on",
    "bits": "bits is what the penalties and the interaction test compare (sections 2 and 4)",
}


@dataclass
class Design:
    named: list[str]
    """The record's named axes, in the order the records list them."""
    extra: list[str]
    """Identity keys the named axes do not explain (records.identity.extra_axes)."""

    @property
    def keys(self) -> list[str]:
        """Every column that identifies a run (with the seed)."""
        return [*self.named, *(k for k in self.extra if k not in self.named)]


def make_design(named: list[str], identities: list[dict[str, Any]], axes: list[dict[str, Any]]) -> Design:
    return Design(named=list(named), extra=identity.extra_axes(identities, axes))


def levels(values: pd.Series) -> list:
    """The distinct values of a column, ANY left out (it stands for every value)."""
    return [v for v in pd.unique(values) if v is not ANY] if len(values) else []


def varies(values: pd.Series) -> bool:
    return len(levels(values)) > 1


def varying(table: pd.DataFrame, keys: list[str], used_only: bool = True) -> list[str]:
    """Keys with more than one value (ANY aside) among the used (or all) runs."""
    rows = table[table["used"]] if used_only else table
    return [k for k in keys if k in rows and varies(rows[k])] if len(rows) else []


def goes_with(key: str, compare: str) -> bool:
    """Whether `key` is the compared key, under it (optim.matrix_lr for optim), or a named axis
    standing for it (qat_start for quant.start): what a cell lets go along with it."""
    return identity.under(key, identity.expand([compare])) or identity.under(compare, identity.expand([key]))


def cell_axes(keys: list[str], compare: str) -> list[str]:
    """The keys a cell holds fixed when `compare` is compared: all but the seed and the keys
    that go with the compared one."""
    return [k for k in keys if k != "seed" and not goes_with(k, compare)]


def resolve_compare(key: str, table: pd.DataFrame, design: Design, identities: list[dict[str, Any]]) -> str:
    """Check --compare KEY against the runs: it must be a key (axis or config key) that varies
    among the used runs. AnalysisInputError (one line, listing the keys that vary) otherwise."""
    used = table["used"].to_numpy()
    shown = [k for k in varying(table, design.keys) if k not in NOT_COMPARABLE]
    listing = ", ".join(shown) if shown else "none"
    if key in NOT_COMPARABLE:
        raise AnalysisInputError(f"--compare {key}: {NOT_COMPARABLE[key]}; keys that vary: {listing}")
    if key in design.keys and key in table:
        if varies(table.loc[used, key]):
            return key
        values = ", ".join(identity.shown(v) for v in levels(table.loc[used, key])) or "none"
        raise AnalysisInputError(f"--compare {key}: it does not vary among the used runs ({values}); keys that vary: "
                                 f"{listing}")
    config_keys = identity.varying_keys([ident for ident, ok in zip(identities, used) if ok])
    if key in config_keys:
        return key
    raise AnalysisInputError(f"--compare {key}: not a key that varies among the used runs (neither a sweep axis nor "
                             f"a config key); keys that vary: {listing}")


def add_key_column(table: pd.DataFrame, key: str, identities: list[dict[str, Any]]) -> pd.DataFrame:
    """The compared key as a column (from the identities) when it is a config key without one
    (quant.start, explained by the named axis qat_start)."""
    if key in table:
        return table
    return table.assign(**{key: [ident.get(key) for ident in identities]})


def compared_levels(table: pd.DataFrame, key: str, keys: list[str]) -> pd.Series:
    """Each run's level along `key`: its value, plus the values of the other keys the cell lets
    go (those under the key or standing for it) when they vary at one value of the key.

    E.g. --compare optim while optim.matrix_lr varies among the Muon runs: the levels are
    'adamw', 'muon (optim.matrix_lr=0.02)' and 'muon (optim.matrix_lr=0.04)', so that one cell
    never holds two runs of one level and seed."""
    free = [c for c in keys if c not in (key, "seed") and c in table and goes_with(c, key)]
    used = table[table["used"]]
    spread = [c for c in free if len(used) and (used.groupby(key, dropna=False)[c]
                                                .agg(lambda s: len(levels(s)) > 1).any())]
    if not spread:
        return table[key]
    return pd.Series([_compound(row[key], {c: row[c] for c in spread}) for _, row in table[[key, *spread]].iterrows()],
                     index=table.index, dtype=object)


def _compound(value: Any, others: dict[str, Any]) -> str:
    def text(v: Any) -> str:  # a key the run does not have (adamw has no matrix_lr) shows as '-'
        return "-" if v is None or (isinstance(v, float) and v != v) else identity.shown(v)

    return f"{text(value)} (" + " ".join(f"{k}={text(v)}" for k, v in others.items()) + ")"


def spread_wildcards(table: pd.DataFrame, cells: list[str], labels: pd.Series) -> pd.DataFrame:
    """The runs table with each run's cell (column `cell`); a run with ANY in a cell key is
    copied into every cell of more definite runs it matches.

    A cosine run's warmdown is ANY (it has no warmdown window): under --compare schedule it
    belongs to the cell of every warmdown, beside the WSD runs it is compared with. Matching is
    by specificity: a run joins the cells of the most definite runs that agree with it wherever it
    is not ANY (a cell nobody more definite matches is a home cell); a run no home cell matches
    keeps its own cell, labelled with '*' (FP16 runs, when only they have those keys as ANY).
    """
    if not cells or table.empty:
        return table.assign(**{CELL_ID: labels})
    combos = [tuple("*" if v is ANY else repr(v) for v in row)
              for row in table[cells].itertuples(index=False, name=None)]
    label_of = dict(zip(combos, labels))

    def covers(general: tuple, specific: tuple) -> bool:
        """`specific` agrees with `general` wherever general is definite, and is more definite."""
        return general != specific and all(g == "*" or g == x for g, x in zip(general, specific))

    unique = list(label_of)
    home = [c for c in unique if not any(covers(c, d) for d in unique)]
    targets = {c: [label_of[d] for d in home if covers(c, d)] or [label_of[c]] for c in unique}
    rows = [i for i, c in enumerate(combos) for _ in targets[c]]
    out = table.iloc[rows].copy()
    out[CELL_ID] = [t for c in combos for t in targets[c]]
    return out.reset_index(drop=True)


def bit_groups(cells: pd.DataFrame, group_axes: list[str], cell_col: str = CELL_ID) -> list[tuple[dict, list[str]]]:
    """Groups of cells that differ only in bits: (the group's key values, its cell ids), in the
    cells' order. A cell with ANY in a group key (an FP16 cell when quant.* or qat_start vary)
    joins every group whose other keys it matches, instead of forming a group of its own."""
    if cells.empty:
        return []
    first = cells.drop_duplicates(cell_col)
    rows = list(zip(first[cell_col].tolist(), first[group_axes].itertuples(index=False, name=None)
                    if group_axes else [()] * len(first)))
    groups: dict[tuple, tuple[dict, list[str]]] = {}
    for cell, values in rows:
        if any(v is ANY for v in values):
            continue
        groups.setdefault(tuple(map(repr, values)), (dict(zip(group_axes, values)), []))[1].append(cell)
    for cell, values in rows:
        if not any(v is ANY for v in values):
            continue
        for key, (group_values, members) in groups.items():
            if all(v is ANY or repr(v) == k for v, k in zip(values, key)):
                members.append(cell)
    return list(groups.values())
