"""The analysis from loaded runs to every number of the report (no files written here).

    load (local | W&B) -> identities, design (named axes + extra keys) -> runs table
      -> usable / excluded / missing -> penalties (paired on identity) -> the compared key (--compare)
      -> cells x level -> optimum per cell -> paired comparisons + Holm -> interaction
      (again along warmdown when another key is compared: the annealing law and the claims use it)
      -> penalty law (+ hold-out, power law) -> grid-distance ratios -> annealing law per cell
      -> the paper's claims, scored
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from qat_lab.analysis import annealing_law, cell_fit, cells as cells_mod, comparisons, coverage as coverage_mod
from qat_lab.analysis import design as design_mod, grid_ratio, parallel, penalty_law, scorecard
from qat_lab.analysis.cells import CELL_ID
from qat_lab.analysis.design import Design
from qat_lab.analysis.fit_cache import FitCache
from qat_lab.analysis.load import AnalysisInputError, RunSet, axis_names, runs_table
from qat_lab.records import identity


DEFAULT_KEY = "warmdown"
"""The study's compared axis: also what the annealing law and the paper's claims are about."""


@dataclass
class Options:
    compare: str | None = None
    """The key compared within cells (--compare): a named axis or any config key that varies.
    None: warmdown, the study's axis, which then need not vary (cells have one level each)."""
    holdout: list[str] = field(default_factory=list)
    """Sizes (model names or parameter counts, e.g. 5M) left out of the penalty-law fit and predicted."""
    law_points: str = "means"
    """'means' (per-size seed means, default) or 'seeds' (every seed-level point)."""
    anneal: bool = True
    anneal_fit_warmdowns: list[float] | None = None
    """Warmdowns whose curves the annealing law is fitted on (default: see cell_fit.default_fit_warmdowns)."""
    anneal_lambdas: tuple[float, ...] | None = None
    """The annealing law's lambda grid; None: scaled to each cell's run length (annealing_law.scaled_lambdas)."""
    workers: int | None = None
    """Processes for the annealing fits and the figures; None = the available cores (at most 8).
    W&B run sets use one: their histories are fetched over the network, once, in this process."""
    fit_cache: str | None = None
    """A folder where the annealing and Multi-Power fits are kept and reused (analysis/fit_cache.py);
    None: every fit is computed. The report is the same either way."""
    max_plots: int = 1
    """Figures per kind (each up to 6 panels; annealing: 3 cells per figure). The tables and
    fits.json always hold everything; the report says what the figures leave out."""


@dataclass
class Along:
    """The within-cell analysis along one key: cells, optima, paired comparisons, interaction."""
    key: str
    cell_axes: list[str]
    """The keys a cell holds fixed (every key but `key`, the keys under it, and the seed)."""
    shown: list[str]
    """Cell keys that vary (the ones a cell label shows)."""
    cell_of_run: pd.Series
    """Each run's cell label (the runs table's order)."""
    level_of_run: pd.Series
    """Each run's level along `key` (its value; compound where keys under it vary too)."""
    cells: pd.DataFrame
    optima: pd.DataFrame
    comparisons: pd.DataFrame
    interaction: list[dict]

    @property
    def group_axes(self) -> list[str]:
        """Cell keys except bits: cells in one group differ only in bit-width."""
        return [a for a in self.cell_axes if a != "bits"]

    @property
    def group_shown(self) -> list[str]:
        return [a for a in self.shown if a != "bits"]

    def table(self, runs: pd.DataFrame) -> pd.DataFrame:
        """The runs table with this analysis's cells and levels."""
        return runs.assign(**{CELL_ID: self.cell_of_run, self.key: self.level_of_run})


@dataclass
class Analysis:
    runset: RunSet
    options: Options
    design: Design
    axes: list[str]
    """Every key of the design: the named axes, then the extra identity keys."""
    varying: list[str]
    """Keys that take more than one value among the used runs."""
    table: pd.DataFrame
    coverage: coverage_mod.Coverage
    along: Along
    """Along the compared key (--compare)."""
    by_warmdown: Along | None
    """Along warmdown (the annealing law and the claims need it); `along` itself when that is the
    compared key; None when the records have no warmdown axis."""
    laws: list[dict]
    holdout_sizes: set[float]
    holdout_notes: list[str]
    ratios: pd.DataFrame
    missing_ratios: dict[str, list[int]]
    cell_laws: list[cell_fit.CellLaw]
    anneal_notes: list[str]
    claims: list[dict]
    seconds: dict[str, float]
    fit_cache_use: dict = field(default_factory=dict)
    """How the fit cache served the annealing fits: hits, misses, unreadable files, a write error
    (empty without a cache). Console only: the report does not depend on it."""

    @property
    def key(self) -> str:
        return self.along.key

    @property
    def cells(self) -> pd.DataFrame:
        return self.along.cells

    @property
    def optima(self) -> pd.DataFrame:
        return self.along.optima

    @property
    def comparisons(self) -> pd.DataFrame:
        return self.along.comparisons

    @property
    def interaction(self) -> list[dict]:
        return self.along.interaction

    @property
    def shown(self) -> list[str]:
        return self.along.shown


def workers_for(runset: RunSet, options: Options) -> int:
    """Processes for the annealing fits and the figures (see Options.workers)."""
    if any(inp.startswith("wandb:") for inp in runset.inputs):
        return 1
    return options.workers if options.workers is not None else parallel.default_workers()


def with_problems(runset: RunSet, fn, *args):
    """(fn(*args), the unreadable-history lines it added): a worker process's additions to
    runset.problems would otherwise stay in the worker."""
    before = len(runset.problems)
    result = fn(*args)
    return result, runset.problems[before:]


def merge_problems(runset: RunSet, lines: list[str]) -> None:
    runset.problems.extend(line for line in lines if line not in runset.problems)


def _fit_cell(cell: str, g: pd.DataFrame, records: dict, runset: RunSet, best: float | None, options: Options,
              cache: FitCache | None):
    """The annealing law of one cell, with notes on the runs it could not use, and what the fit
    cache did for it."""
    curves, notes = cell_fit.cell_curves(g, records, runset.history)
    if not curves:
        return None, notes + [f"{cell}: no complete loss curve, no annealing fit"], {}
    first = records[g["run_id"].iloc[0]]
    law = cell_fit.fit_cell(
        cell, curves, annealing_law.schedule_of(first), int(g["steps"].iloc[0]),
        float(g["lr_mult"].iloc[0]) if "lr_mult" in g else 1.0, best,
        options.anneal_fit_warmdowns, options.anneal_lambdas, fitter=cache.fit_laws if cache else None)
    return law, notes, cache.take_use() if cache else {}


def _add_use(total: dict, use: dict) -> None:
    for k, v in use.items():
        if k in ("hits", "misses"):
            total[k] = total.get(k, 0) + v
        elif k == "unreadable":
            total.setdefault(k, []).extend(v)
        elif v:
            total[k] = v


def annealing_laws(table: pd.DataFrame, wd: Along, runset: RunSet, options: Options
                   ) -> tuple[list[cell_fit.CellLaw], list[str], dict]:
    """One annealing-law fit per warmdown cell (every key but warmdown and seed), whatever --compare
    is; and how the fit cache served them."""
    cache = FitCache(Path(options.fit_cache)) if options.fit_cache else None
    records = {run.run_id: run.record for run in runset.runs}
    optima = wd.optima
    best = optima.set_index(CELL_ID)["best_warmdown"].to_dict() if len(optima) else {}
    runs = wd.table(table)
    groups = dict(list(runs[runs["used"]].groupby(CELL_ID, sort=False)))
    # Every cell with a used run has an optimum; optima are in the cells' readable order (models
    # by size), which the annealing tables and figures then follow too. One task per cell.
    tasks = [(with_problems, (runset, _fit_cell, cell, groups[cell], records, runset, best.get(cell), options, cache))
             for cell in (optima[CELL_ID].tolist() if len(optima) else [])]
    out, notes, use = [], [], {}
    for (law, cell_notes, cell_use), problems in parallel.fork_map(tasks, workers_for(runset, options)):
        merge_problems(runset, problems)
        notes.extend(cell_notes)
        _add_use(use, cell_use)
        if law is not None:
            out.append(law)
    return out, notes, use


def along(table: pd.DataFrame, keys: list[str], key: str) -> Along:
    """Cells, optima, paired comparisons (Holm over all of them) and the interaction along `key`."""
    cax = design_mod.cell_axes(keys, key)
    cell_of_run, shown = cells_mod.cell_labels(table, cax)
    level_of_run = design_mod.compared_levels(table, key, keys)
    runs = design_mod.spread_wildcards(table.assign(**{key: level_of_run}), cax, cell_of_run)
    cells = cells_mod.cell_table(runs, cax, key)
    optima = cells_mod.optima(cells, cax, key)
    comps = comparisons.within_cells(runs, cells, key)
    inter = comparisons.interaction(runs, cells, comps, key, cax, shown)
    return Along(key=key, cell_axes=cax, shown=shown, cell_of_run=cell_of_run, level_of_run=level_of_run, cells=cells,
                 optima=optima, comparisons=comps, interaction=inter)


def analyse(runset: RunSet, options: Options | None = None) -> Analysis:
    options = options or Options()
    if not runset.runs:
        where = ", ".join(runset.inputs) or "the input"
        extra = f" ({len(runset.problems)} unreadable)" if runset.problems else ""
        raise AnalysisInputError(f"no run records found in {where}{extra}")
    seconds: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        seconds[name] = now - t
        t = now

    records = [run.record for run in runset.runs]
    identities = [identity.run_identity(r) for r in records]
    design = design_mod.make_design(axis_names(runset), identities, [r["axes"] for r in records])
    table = runs_table(runset, identities, design.extra)
    for a in design.keys:  # a record from an older sweep may lack an axis
        if a not in table:
            table[a] = None
    table = coverage_mod.mark_usable(table)
    cov = coverage_mod.coverage(table, design.keys, runset.expected_jobs)
    table = cells_mod.add_pairing(table, identities)
    key = (design_mod.resolve_compare(options.compare, table, design, identities) if options.compare
           else DEFAULT_KEY)
    table = design_mod.add_key_column(table, key, identities)
    keys = design.keys if key in design.keys else [*design.keys, key]
    varying = design_mod.varying(table, keys)
    lap("table")

    main = along(table, keys, key)
    table = main.table(table)
    if key == DEFAULT_KEY:
        by_wd = main
    else:
        by_wd = along(table, keys, DEFAULT_KEY) if DEFAULT_KEY in table else None
    lap("cells and tests")

    holdout, holdout_notes = penalty_law.resolve_holdout(options.holdout, table)
    laws = penalty_law.penalty_laws(table, keys, varying, options.law_points, holdout)
    lap("penalty law")

    table = grid_ratio.add_ratios(table, identities, records)
    ratios = grid_ratio.ratio_table(table, key)
    missing = grid_ratio.missing_ratios(table)
    lap("grid ratio")

    cell_laws, anneal_notes, cache_use = (annealing_laws(table, by_wd, runset, options)
                                          if options.anneal and by_wd is not None else ([], [], {}))
    lap("annealing law")
    claims = scorecard.score(table, by_wd, laws, holdout)
    lap("claims")
    return Analysis(runset=runset, options=options, design=design, axes=keys, varying=varying, table=table,
                    coverage=cov, along=main, by_warmdown=by_wd, laws=laws, holdout_sizes=holdout,
                    holdout_notes=holdout_notes, ratios=ratios, missing_ratios=missing, cell_laws=cell_laws,
                    anneal_notes=anneal_notes, claims=claims, seconds=seconds, fit_cache_use=cache_use)
