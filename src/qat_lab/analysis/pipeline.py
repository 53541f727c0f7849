"""The analysis from loaded runs to every number of the report (no files written here).

    load (local | W&B) -> runs table -> usable / excluded / missing -> penalties (paired)
      -> cells x warmdown -> optimum per cell -> paired comparisons + Holm -> interaction
      -> penalty law (+ hold-out, power law) -> grid-distance ratios -> annealing law per cell
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from qat_lab.analysis import annealing_law, cells as cells_mod, comparisons, coverage as coverage_mod
from qat_lab.analysis import grid_ratio, parallel, penalty_law
from qat_lab.analysis.cells import CELL_ID
from qat_lab.analysis.load import AnalysisInputError, RunSet, axis_names, runs_table


@dataclass
class Options:
    holdout: list[str] = field(default_factory=list)
    """Sizes (model names or parameter counts, e.g. 5M) left out of the penalty-law fit and predicted."""
    law_points: str = "means"
    """'means' (per-size seed means, default) or 'seeds' (every seed-level point)."""
    anneal: bool = True
    anneal_fit_warmdowns: list[float] | None = None
    """Warmdowns whose curves the annealing law is fitted on (default: see annealing_law.default_fit_warmdowns)."""
    anneal_lambdas: tuple[float, ...] = annealing_law.DEFAULT_LAMBDAS
    workers: int | None = None
    """Processes for the annealing fits and the figures; None = the available cores (at most 8).
    W&B run sets use one: their histories are fetched over the network, once, in this process."""
    max_plots: int = 1
    """Figures per kind (each up to 6 panels; annealing: 3 cells per figure). The tables and
    fits.json always hold everything; the report says what the figures leave out."""


@dataclass
class Analysis:
    runset: RunSet
    options: Options
    axes: list[str]
    varying: list[str]
    """Axes that take more than one value among the used runs."""
    shown: list[str]
    """Cell axes that vary (the ones a cell label shows)."""
    table: pd.DataFrame
    coverage: coverage_mod.Coverage
    cells: pd.DataFrame
    optima: pd.DataFrame
    comparisons: pd.DataFrame
    interaction: list[dict]
    laws: list[dict]
    holdout_sizes: set[float]
    holdout_notes: list[str]
    ratios: pd.DataFrame
    unmatched_grid_bits: list[int]
    cell_laws: list[annealing_law.CellLaw]
    anneal_notes: list[str]
    seconds: dict[str, float]

    @property
    def group_axes(self) -> list[str]:
        """Cell axes except bits: cells in one group differ only in bit-width."""
        return [a for a in cells_mod.cell_axes(self.axes) if a != "bits"]

    @property
    def group_shown(self) -> list[str]:
        return [a for a in self.shown if a != "bits"]


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


def _fit_cell(cell: str, g: pd.DataFrame, records: dict, runset: RunSet, best: float | None, options: Options):
    """The annealing law of one cell, with notes on the runs it could not use."""
    curves, notes = annealing_law.cell_curves(g, records, runset.history)
    if not curves:
        return None, notes + [f"{cell}: no complete loss curve, no annealing fit"]
    first = records[g["run_id"].iloc[0]]
    return annealing_law.fit_cell(
        cell, curves, annealing_law.schedule_of(first), int(g["steps"].iloc[0]),
        float(g["lr_mult"].iloc[0]) if "lr_mult" in g else 1.0, best,
        options.anneal_fit_warmdowns, options.anneal_lambdas), notes


def annealing_laws(table: pd.DataFrame, optima: pd.DataFrame, runset: RunSet, options: Options
                   ) -> tuple[list[annealing_law.CellLaw], list[str]]:
    records = {run.run_id: run.record for run in runset.runs}
    best = optima.set_index(CELL_ID)["best_warmdown"].to_dict() if len(optima) else {}
    groups = dict(list(table[table["used"]].groupby(CELL_ID, sort=False)))
    # Every cell with a used run has an optimum; optima are in the cells' readable order (models
    # by size), which the annealing tables and figures then follow too. One task per cell.
    tasks = [(with_problems, (runset, _fit_cell, cell, groups[cell], records, runset, best.get(cell), options))
             for cell in (optima[CELL_ID].tolist() if len(optima) else [])]
    out, notes = [], []
    for (law, cell_notes), problems in parallel.fork_map(tasks, workers_for(runset, options)):
        merge_problems(runset, problems)
        notes.extend(cell_notes)
        if law is not None:
            out.append(law)
    return out, notes


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

    axes = axis_names(runset)
    table = runs_table(runset)
    for a in axes:  # a record from an older sweep may lack an axis
        if a not in table:
            table[a] = None
    table = coverage_mod.mark_usable(table, axes)
    cov = coverage_mod.coverage(table, axes, runset.expected_jobs)
    table = cells_mod.add_pairing(table, [run.record for run in runset.runs])
    table, shown = cells_mod.add_cell_ids(table, axes)
    varying = cells_mod.varying_axes(table, axes)
    lap("table")

    cells = cells_mod.cell_table(table, axes)
    optima = cells_mod.optima(cells, axes)
    comps = comparisons.warmdown_comparisons(table, cells)
    if len(comps):  # in the cells' order (models by size), not alphabetical
        rank = {c: i for i, c in enumerate(dict.fromkeys(cells[CELL_ID]))}
        comps = comps.sort_values([CELL_ID, "warmdown"], key=lambda col: col.map(rank) if col.name == CELL_ID else col,
                                  ignore_index=True)
    inter = comparisons.interaction(table, cells, comps, axes, shown)
    lap("cells and tests")

    holdout, holdout_notes = penalty_law.resolve_holdout(options.holdout, table)
    laws = penalty_law.penalty_laws(table, axes, varying, options.law_points, holdout)
    lap("penalty law")

    table = grid_ratio.add_ratios(table)
    ratios = grid_ratio.ratio_table(table)
    unmatched = grid_ratio.unmatched_grids(table)
    lap("grid ratio")

    cell_laws, anneal_notes = annealing_laws(table, optima, runset, options) if options.anneal else ([], [])
    lap("annealing law")
    return Analysis(runset=runset, options=options, axes=axes, varying=varying, shown=shown, table=table,
                    coverage=cov, cells=cells, optima=optima, comparisons=comps, interaction=inter, laws=laws,
                    holdout_sizes=holdout, holdout_notes=holdout_notes, ratios=ratios, unmatched_grid_bits=unmatched,
                    cell_laws=cell_laws, anneal_notes=anneal_notes, seconds=seconds)
