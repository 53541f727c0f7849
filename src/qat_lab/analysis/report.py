"""Write the report directory: report.md, cells.csv, runs.csv, comparisons.csv, fits.json, PNGs.

report.md is meant to be read on its own: what was run, what is missing, what was found, with the
numbers and the pictures inline. The CSVs and fits.json hold everything the Markdown summarises.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qat_lab.analysis import parallel, plots
from qat_lab.analysis.cells import CELL_ID, fmt_value
from qat_lab.analysis.pipeline import Analysis, merge_problems, with_problems, workers_for
from qat_lab.quant import FP_BITS

MAX_LISTED = 50
"""Rows of excluded/missing runs listed in report.md (all of them are in runs.csv / missing.csv)."""


# ------------------------------------------------------------------------------ formatting

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


def size_text(n: float) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "?"
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}K" if n >= 1e3 else f"{int(n)}"


def plain(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to null, tuple keys to strings."""
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


# ------------------------------------------------------------------------------ sections

def section_what_was_run(a: Analysis) -> list[str]:
    t, cov = a.table, a.coverage
    used = t[t["used"]]
    out = ["## What was run", ""]
    out.append("Sources: " + ", ".join(f"`{s}`" for s in a.runset.inputs) + ".")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(cov.counts.items()))
    out.append(f"Run records: **{len(t)}** ({counts}); **{cov.n_used}** used in the statistics "
               f"(completed with a finite final loss, no duplicates).")
    out.append("")
    rows = []
    for ax in a.axes:
        values = sorted({fmt_value(v) for v in used[ax].tolist()}, key=_sort_key) if len(used) else []
        rows.append([ax, ", ".join(values) if values else "-", "varies" if ax in a.varying else "constant"])
    out += [md_table(["axis", "values (used runs)", ""], rows), ""]
    sizes = used[["model", "size"]].drop_duplicates().sort_values("size") if "model" in used else pd.DataFrame()
    if len(sizes):
        listed = [f"{m} = {int(s):,}" if pd.notna(s) else f"{m} = ?" for m, s in sizes.itertuples(index=False)]
        out.append("Model sizes (non-embedding parameters): " + ", ".join(listed) + ".")
    if len(a.cells):
        n = a.cells["n"]
        span = f"{int(n.min())}" + (f" to {int(n.max())}" if n.max() != n.min() else "")
        out.append(f"Seeds per cell x warmdown: {span}.")
    out.append("")
    return out


def _sort_key(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def section_missing(a: Analysis) -> list[str]:
    cov = a.coverage
    out = ["## Missing and excluded runs", ""]
    incomplete = False
    for sweep, (expected, found) in sorted(cov.expected.items()):
        line = f"- sweep `{sweep}`: its multirun.yaml describes {expected} jobs; {found} have a record"
        if found < expected:
            line += f" (**{expected - found} not started yet**)"
            incomplete = True
        out.append(line + ".")
    running = int((a.table["status"] == "running").sum())
    if running:
        incomplete = True
        out.append(f"- {running} run(s) still running (or stopped without writing a final record).")
    if incomplete:
        out.insert(2, "**This analysis is of an incomplete sweep**: the numbers below use the runs finished so far.\n")
    ex = cov.excluded
    if len(ex):
        out += ["", f"{len(ex)} run(s) left out of the statistics (every one is also in runs.csv, `used` = False):", ""]
        shown = [x for x in a.varying if x in ex]
        rows = [[*(fmt_value(r[x]) for x in shown), r["status"], r["excluded"], f"`{r['run_id']}`"]
                for _, r in ex.head(MAX_LISTED).iterrows()]
        out.append(md_table([*shown, "status", "reason", "record"], rows))
        if len(ex) > MAX_LISTED:
            out.append(f"\n... and {len(ex) - MAX_LISTED} more (runs.csv).")
    else:
        out.append("- No run was left out: every record completed with a finite loss.")
    if len(cov.missing):
        out += ["", f"{len(cov.missing)} grid point(s) with no record at all (the product of the values each sweep's "
                "records show; full list in missing.csv):", ""]
        shown = [x for x in ["sweep_id", *a.axes] if x in cov.missing and cov.missing[x].nunique(dropna=False) > 1
                 or x in a.varying]
        rows = [[fmt_value(r[x]) for x in shown] for _, r in cov.missing.head(MAX_LISTED).iterrows()]
        out.append(md_table(shown, rows))
    for note in cov.notes:
        out.append(f"- {note}")
    if a.runset.problems:
        out += ["", f"{len(a.runset.problems)} unreadable record(s) or history file(s), skipped:", ""]
        out += [f"- {p}" for p in a.runset.problems]
    out.append("")
    return out


def section_glance(a: Analysis) -> list[str]:
    out = ["## Findings at a glance", ""]
    if not a.coverage.n_used:
        out.append("- **No usable run**: every record is listed above with the reason it was left out.")
    if len(a.optima):
        counts = a.optima["best_warmdown"].value_counts().sort_index()
        out.append(f"- **Optimal warmdown** (argmin of the seed-mean final loss) over {len(a.optima)} cell(s): " +
                   ", ".join(f"{fmt_value(w)} in {n}" for w, n in counts.items()) + ".")
    if len(a.comparisons):
        c = a.comparisons
        sig_n = int(c["significant"].sum())
        tested = int(c["p_t"].notna().sum())
        out.append(f"- **Paired comparisons** against each cell's best warmdown: {sig_n} of {tested} testable "
                   f"comparisons significantly worse (Holm-adjusted t-test p < 0.05)" +
                   (f"; {len(c) - tested} untestable (one seed)" if len(c) > tested else "") + ".")
    elif len(a.cells):
        out.append("- **Paired comparisons**: none possible (every cell has a single warmdown).")
    out += _glance_interaction(a.interaction)
    q = a.cells[(a.cells["bits"] != FP_BITS) & a.cells["optimal"]] if len(a.cells) else a.cells
    if len(q) and q["penalty_n"].sum():
        by_bits = q.groupby("bits")["penalty_mean"].agg(["mean", "min", "max"])
        parts = [f"{plots.bits_name(b)} {r['mean']:+.4f}"
                 + (f" (range {r['min']:+.4f} to {r['max']:+.4f})" if r["min"] != r["max"] else "")
                 for b, r in by_bits.sort_index(ascending=False).iterrows()]
        out.append("- **Penalty at each cell's optimal warmdown** (nats/token, vs FP16): " + "; ".join(parts) + ".")
    fitted = [law for law in a.laws if law["laws"]]
    if fitted:
        by_bits: dict[int, list[float]] = {}
        for law in fitted:
            by_bits.setdefault(int(law["axes"]["bits"]), []).append(law["laws"][0]["params"]["b"])
        slopes = [f"{plots.bits_name(b)} b = {np.median(v):+.3g}"
                  + (f" ({min(v):+.3g} to {max(v):+.3g} over {len(v)} families)" if len(v) > 1 else "")
                  for b, v in sorted(by_bits.items(), reverse=True)]
        families = f"{len(fitted)} famil{'y' if len(fitted) == 1 else 'ies'}"
        out.append(f"- **Penalty law** P = a + b ln N fitted in {families}: {'; '.join(slopes)} (nats/token per e-fold "
                   "of N; negative = the penalty shrinks with size).")
        cov = [law["laws"][0].get("holdout_coverage") for law in fitted if law["laws"][0].get("holdout_coverage")]
        if cov:
            out.append(f"- **Held-out sizes** inside their 95% prediction interval: "
                       f"{sum(c['inside'] for c in cov)}/{sum(c['n'] for c in cov)}.")
    elif a.laws:
        out.append(f"- **Penalty law**: not fitted ({a.laws[0]['note']}).")
    if len(a.ratios):
        r = a.ratios.groupby("bits")[["pre_warmdown_mean", "final_mean"]].mean()
        out.append("- **Grid-distance ratio** d(QAT)/d(FP16), same cell and seed: " + "; ".join(
            f"{plots.bits_name(b)} pre-warmdown {x['pre_warmdown_mean']:.3f}, final {x['final_mean']:.3f}"
            for b, x in r.iterrows()) + " (1 = as far from the grid as FP16 weights).")
    fits = [cl for cl in a.cell_laws if cl.best]
    if fits:
        held = [cl.chosen["heldout"] for cl in fits if not math.isnan(cl.chosen["heldout"]["r2"])]
        agree = [cl for cl in fits if cl.empirical_optimum is not None]
        text = f"- **Annealing law** fitted in {len(fits)} cell(s)"
        if held:
            text += (f"; held-out curves: median R² {np.median([h['r2'] for h in held]):.3f}, "
                     f"median MAE {np.median([h['mae'] for h in held]):.4f} nats")
        if agree:
            same = sum(cl.chosen["predicted_optimum_among_tested"] == cl.empirical_optimum for cl in agree)
            text += f"; its optimum among the tested warmdowns matches the empirical one in {same}/{len(agree)} cells"
        out.append(text + ".")
    out.append("")
    return out


def _glance_interaction(groups: list[dict], listed: int = 4) -> list[str]:
    """One bullet per group of cells differing only in bits (a summary line when there are many)."""
    out = []
    if len(groups) > listed:
        moves = sum(g["moves"] for g in groups)
        tested = [g for g in groups if g["f_test"]["df_num"]]
        sig_n = sum(g["f_test"]["p"] < 0.05 for g in tested)
        out.append(f"- **Optimum by bits**: moves with bits in {moves} of {len(groups)} groups of cells; interaction "
                   f"F-test p < 0.05 (uncorrected) in {sig_n} of {len(tested)} testable groups (section 4).")
        return out
    for g in groups:
        opt = ", ".join(f"{plots.bits_name(b)} {fmt_value(w)}"
                        for b, w in sorted(g["optimal_warmdown_by_bits"].items(), reverse=True))
        f = g["f_test"]
        ftxt = f"interaction F = {sig(f['F'])}, p = {pval(f['p'])}" if f["df_num"] else "no interaction test (one seed)"
        moves = "moves with bits" if g["moves"] else "the same for every bit-width"
        out.append(f"- **Optimum by bits** ({g['group']}): {opt}; {moves}; {ftxt}.")
    return out


def _wide(cells: pd.DataFrame, value: str, sd: str, n: str, digits: int = 4,
          mark_best: bool = True) -> tuple[list[str], list[list[str]]]:
    """One row per cell, one column per warmdown: 'mean ± sd (n)', the optimum in bold."""
    wds = sorted(cells["warmdown"].unique())
    by_cell: dict[str, dict] = {}
    for r in cells.to_dict("records"):
        by_cell.setdefault(r[CELL_ID], {})[r["warmdown"]] = r
    rows = []
    for cell, per_wd in by_cell.items():
        row = [cell, size_text(next(iter(per_wd.values()))["size"])]
        for w in wds:
            h = per_wd.get(w)
            if h is None:
                row.append("-")
                continue
            text = mean_sd(h[value], h[sd], int(h[n]), digits)
            row.append(f"**{text}**" if mark_best and h["optimal"] else text)
        rows.append(row)
    return ["cell", "size", *(f"wd {fmt_value(w)}" for w in wds)], rows


def section_cells(a: Analysis, figs: dict) -> list[str]:
    out = ["## 1. Final loss by cell and warmdown", ""]
    if a.cells.empty:
        return out + ["No usable runs.", ""]
    out.append("Seed mean ± sd (n seeds) of the final val loss (nats/token, after the quantise -> dequantise round "
               "trip at the run's bits). **Bold**: the cell's optimum (argmin of the seed mean). "
               "A cell is every axis except warmdown and seed. All numbers: cells.csv.")
    out.append("")
    head, rows = _wide(a.cells, "val_loss_mean", "val_loss_sd", "n")
    out += [md_table(head, rows), ""]
    out += figures(figs.get("loss_vs_warmdown"),
                   "Final val loss vs warmdown, one line per bit-width; error bars: seed sd; star: the optimum",
                   "groups of cells")
    return out


def section_penalties(a: Analysis) -> list[str]:
    out = ["## 2. Quantisation penalties", ""]
    q = a.cells[a.cells["bits"] != FP_BITS] if len(a.cells) else a.cells
    if q.empty or not q["penalty_n"].sum():
        return out + ["No quantised run has a bits=16 partner (same everything else), so there is no penalty.", ""]
    out.append("P_b = L(bits=b) - L(bits=16) per seed, paired on every other axis (seed included), then seed mean ± sd. "
               "Positive = the quantised model is worse.")
    out.append("")
    head, rows = _wide(q, "penalty_mean", "penalty_sd", "penalty_n", mark_best=False)
    out += [md_table(head, rows), ""]
    return out


def section_comparisons(a: Analysis) -> list[str]:
    out = ["## 3. Is the best warmdown distinguishable from the others?", ""]
    c = a.comparisons
    if c.empty:
        return out + ["Nothing to compare: no cell has two warmdowns.", ""]
    out.append("Within each cell, every warmdown against the cell's best, seed by seed: d = L(warmdown) - L(best) "
               "(positive: the best won). t has n-1 dof; z is the same statistic against the normal; wins = seeds the "
               "best won; the sign test is exact (ties dropped). Holm's correction runs over all "
               f"{len(c)} comparisons (all cells together); 'sig.' = Holm-adjusted t p < 0.05. The best is picked on the "
               "same data, so treat a significant result as 'clearly worse than the best seen'.")
    if (c["n"] < 2).any():
        out.append("")
        out.append(f"**{int((c['n'] < 2).sum())} comparison(s) have a single common seed: no t, z or spread, only the sign.**")
    if (c["n"].between(2, 5)).any():
        out.append("")
        out.append("With 5 or fewer seeds the sign test cannot reach p < 0.05 (5/5 gives 0.0625).")
    out.append("")
    rows = [[r[CELL_ID], fmt_value(r["warmdown"]), fmt_value(r["best_warmdown"]), f"{r['mean']:+.4f}", sig(r["t"]),
             pval(r["p_t"]), pval(r["p_t_holm"]), pval(r["p_z"]), f"{r['wins']}/{r['n']}", pval(r["p_sign"]),
             pval(r["p_sign_holm"]), "yes" if r["significant"] else ""] for _, r in c.iterrows()]
    out += [md_table(["cell", "wd", "best", "mean d", "t (= z)", "p_t", "p_t Holm", "p_z", "wins", "p_sign",
                      "p_sign Holm", "sig."], rows), "", "All columns: comparisons.csv.", ""]
    return out


def section_interaction(a: Analysis) -> list[str]:
    out = ["## 4. Does the optimal warmdown move with bits?", ""]
    if not a.interaction:
        return out + ["Not answerable here: it needs at least two bit-widths and two warmdowns in a group of cells "
                      "that differ only in bits.", ""]
    out.append("Groups of cells that differ only in bit-width. The F-test compares loss ~ bits + warmdown + seed with "
               "the model that adds every bits x warmdown term (OLS, seeds as blocks). The last column reads the "
               "paired comparisons of section 3: is FP16's optimal warmdown significantly worse at the other bit-width?")
    out.append("")
    rows = []
    for g in a.interaction:
        opt = ", ".join(f"{plots.bits_name(b)}: {fmt_value(w)}"
                        for b, w in sorted(g["optimal_warmdown_by_bits"].items(), reverse=True))
        f = g["f_test"]
        ftxt = f"F({f['df_num']}, {f['df_den']}) = {sig(f['F'])}, p = {pval(f['p'])}" if f["df_num"] else f["note"]
        cost = "; ".join(f"{plots.bits_name(e['bits'])}: +{e['mean_diff']:.4f} at wd {fmt_value(e['fp16_optimum'])}, "
                         f"{e['wins']}/{e['n']} seeds, Holm p_t {pval(e['p_t_holm'])}" for e in g["fp16_optimum_elsewhere"]) or "-"
        rows.append([g["group"], opt, "yes" if g["moves"] else "no", ftxt, cost])
    out += [md_table(["group", "optimal warmdown", "moves?", "interaction test", "FP16's optimum at other bits"], rows),
            ""]
    return out


def section_penalty_law(a: Analysis, figs: dict) -> list[str]:
    out = ["## 5. Penalty law P(N) = a + b ln N", ""]
    if not a.laws:
        return out + ["No penalties to fit (no quantised run with an FP16 partner).", ""]
    mode = a.options.law_points
    out.append(f"OLS of the penalty on ln N (N = non-embedding parameters), one law per family (every axis but model "
               f"and seed). Points: {'per-size seed means' if mode == 'means' else 'every seed-level point'} "
               "(--law-points). 95% prediction interval for a new point: yhat ± t(0.975, n-2) s sqrt(1 + 1/n + "
               "(x0 - xbar)²/Sxx), equal to statsmodels' obs_ci. Power law: ln P = a + b ln N (only where every P > 0).")
    if a.holdout_sizes:
        out.append(f"Held out of the fit and predicted: {', '.join(size_text(s) for s in sorted(a.holdout_sizes))}.")
    for note in a.holdout_notes:
        out.append(f"- {note}")
    out.append("")
    rows = []
    for fam in a.laws:
        if not fam["laws"]:
            rows.append([fam["family"], "-", "-", "-", "-", "-", "-", "-", fam["note"]])
            continue
        for law in fam["laws"]:
            cov = law.get("holdout_coverage")
            rows.append([fam["family"], law["kind"], f"{law['params']['a']:.4g} ± {law['se']['a']:.2g}",
                         f"{law['params']['b']:+.4g} ± {law['se']['b']:.2g}", num(law["r2"], 3), f"{law['n']} ({law['dof']} dof)",
                         f"{law['t_crit']:.2f}", f"±{law['pi_half_width_mean']:.3g}",
                         f"{cov['inside']}/{cov['n']} inside" if cov else (fam["note"] if law["kind"] == "log-linear" else "")])
    head = ["family", "law", "a ± se", "b ± se", "R²", "points", "t crit", "mean PI half-width", "held out / note"]
    out += [md_table(head, rows), ""]
    t_small = [law for fam in a.laws for law in fam["laws"] if law["dof"] <= 3]
    if t_small:
        out.append(f"With so few points the t quantile is large (e.g. {t_small[0]['t_crit']:.2f} at {t_small[0]['dof']} dof): "
                   "the intervals are wide, and a held-out point inside one is weak evidence.")
        out.append("")
    out += figures(figs.get("penalty_law"),
                   "Penalty vs size with the log-linear law and its 95% prediction band (one colour per bit-width)",
                   "panels")
    return out


def section_grid(a: Analysis, figs: dict) -> list[str]:
    out = ["## 6. Weight-to-grid distance", ""]
    out.append("d = mean |W/s - round(W/s)| over the quantised matrices (0.25: weights spread uniformly between grid "
               "points; 0: on the grid). Ratio = d(QAT run) / d(its FP16 partner), same cell and seed, at the "
               "pre-warmdown snapshot and at the end. FP16 runs are measured on the probe grid, so only bit-widths "
               "measured on that same grid get a ratio.")
    if a.unmatched_grid_bits:
        out.append(f"No ratio for {', '.join(plots.bits_name(b) for b in a.unmatched_grid_bits)}: their FP16 partner "
                   "was measured on another grid.")
    out.append("")
    if len(a.ratios):
        rows = [[r[CELL_ID], fmt_value(r["warmdown"]), f"INT{int(r['grid_bits'])}",
                 mean_sd(r["pre_warmdown_mean"], r["pre_warmdown_sd"], int(r["pre_warmdown_n"]), 3),
                 mean_sd(r["final_mean"], r["final_sd"], int(r["final_n"]), 3)] for _, r in a.ratios.iterrows()]
        out += [md_table(["cell", "wd", "grid", "ratio pre-warmdown", "ratio final"], rows), ""]
    else:
        out += ["No ratio: no quantised run has an FP16 partner measured on the same grid.", ""]
    out += figures(figs.get("grid_distance"), "Grid distance over training (seed mean), one line per bit-width, each on "
                   "its own grid; dashed: warmdown starts; dotted: 0.25", "panels")
    return out


def section_annealing(a: Analysis, figs: dict) -> list[str]:
    out = ["## 7. LR-annealing scaling law", ""]
    if not a.options.anneal:
        return out + ["Skipped (--no-anneal).", ""]
    out.append("L(s) = L0 + A S1^-α - C S2 (Tissue et al. 2024) per cell, on the seed-mean train-loss curve of each "
               "warmdown; S1, S2 from the LR multiplier of every optimiser step (warmup at peak), fitted on post-warmup "
               "points with a Huber loss (δ = 1e-3) on log residuals, L-BFGS-B with parameters ≥ 0 and many starts. "
               "The law is fitted on some warmdowns' curves and predicts the others from their LR traces alone. "
               "λ (the annealing momentum) is chosen on a grid by the fit objective; the sensitivity table shows "
               "what each λ would say.")
    out.append("")
    fits = [cl for cl in a.cell_laws if cl.best]
    if not fits:
        out += ["No cell had a complete loss curve to fit."] + [f"- {n}" for n in a.anneal_notes[:MAX_LISTED]] + [""]
        return out
    rows = []
    for cl in fits:
        b, row = cl.best, cl.chosen
        p = b.params
        status = "ok" if b.success else f"**not converged**: {b.message}"
        status += f" ({b.n_converged}/{b.n_starts} starts)"
        if b.at_bound:
            status += f"; {', '.join(b.at_bound)} at bound 0"
        rows.append([cl.cell, ", ".join(fmt_value(w) for w in cl.fit_warmdowns),
                     ", ".join(fmt_value(w) for w in cl.heldout_warmdowns) or "-",
                     f"{p['L0']:.3f}, {p['A']:.3g}, {p['alpha']:.3f}, {p['C']:.3g}", f"{b.lam:g}",
                     f"{num(row['fit']['r2'], 3)} / {num(row['fit']['mae'], 4)}",
                     f"{num(row['heldout']['r2'], 3)} / {num(row['heldout']['mae'], 4)}",
                     fmt_value(row.get("predicted_optimum", "-")), fmt_value(row["predicted_optimum_among_tested"]),
                     fmt_value(cl.empirical_optimum) if cl.empirical_optimum is not None else "-",
                     status])
    out += [md_table(["cell", "fit on wd", "predicted wd", "L0, A, α, C", "λ", "fit R² / MAE", "held-out R² / MAE",
                      "predicted optimum", "predicted (tested wd)", "empirical optimum", "optimizer"], rows), ""]
    if any(cl.best.at_bound for cl in fits):
        out.append("A parameter at its bound 0 (usually L0) means the curves did not determine it: short runs still in "
                   "their fast early descent fit a pure power law; read predictions far from the fitted curves with care.")
        out.append("")
    out.append("MAE in nats/token over post-warmup steps. 'predicted optimum' is the argmin of the law's final loss "
               "over warmdown fractions 0, 0.02, ..., 1; 'predicted (tested wd)' restricts it to the warmdowns run.")
    out.append("")
    out += ["### λ sensitivity", ""]
    lam_rows = []
    for cl in fits:
        for r in cl.by_lambda:
            lam_rows.append([cl.cell, f"{r['lambda']:g}" + (" (chosen)" if r["lambda"] == cl.best_lam else ""),
                             sig(r["objective"], 5), num(r["heldout"]["r2"], 3), num(r["heldout"]["mae"], 4),
                             fmt_value(r.get("predicted_optimum", "-")), f"{r['params']['C']:.3g}"])
    head = ["cell", "λ", "fit objective", "held-out R²", "held-out MAE", "predicted optimum", "C"]
    out += [md_table(head, lam_rows), ""]
    grid = a.options.anneal_lambdas
    edge = [cl for cl in fits if len(grid) > 1 and cl.best_lam in (min(grid), max(grid))]
    if edge:
        out.append(f"The chosen λ is at the edge of the grid in {len(edge)} of {len(fits)} cell(s): the best λ may lie "
                   "outside it (widen --anneal-lambdas).")
        out.append("")
    spread = [cl for cl in fits if len({r.get("predicted_optimum") for r in cl.by_lambda}) > 1]
    if spread:
        out.append(f"The predicted optimum changes with λ in {len(spread)} of {len(fits)} cell(s): read it with that "
                   "range in mind.")
        out.append("")
    per, drawn = plots.ANNEAL_CELLS_PER_FIGURE, figs["annealing"]
    for i, p in enumerate(drawn.paths):  # figures hold the first cells, in order
        names = ", ".join(cl.cell for cl in fits[i * per:(i + 1) * per])
        out += image(p, f"Annealing law ({names}): observed vs fitted/predicted curves, and the predicted final "
                        "loss against warmdown fraction for every λ")
    if drawn.note("cells"):
        out += [drawn.note("cells"), ""]
    if a.anneal_notes:
        out += ["Curves left out of the fits:", ""] + [f"- {n}" for n in a.anneal_notes[:MAX_LISTED]] + [""]
    for p in figs["lr_curves"].paths:
        out += image(p, "LR multiplier, forward area S1 and annealing area S2 of every schedule in the runs")
    return out


# ------------------------------------------------------------------------------ files

def make_figures(a: Analysis, out: Path) -> dict[str, plots.Drawn]:
    """Every figure of the report, one task per kind, spread over the analysis's workers."""
    m = a.options.max_plots
    fits = [cl for cl in a.cell_laws if cl.best]
    lams = [cl.best_lam for cl in fits]
    tasks: dict[str, parallel.Task] = {}
    # The slowest figures first, so that a worker is not left with the longest one at the end.
    tasks["grid_distance"] = (plots.grid_distance_over_training,
                              (a.table, a.runset.history, a.group_axes, a.group_shown, out, m))
    tasks["annealing"] = (plots.annealing_fits, (fits, out, m))
    if len(a.cells):
        tasks["loss_vs_warmdown"] = (plots.loss_vs_warmdown, (a.cells, a.group_axes, a.group_shown, out, m))
    tasks["penalty_law"] = (plots.penalty_vs_size, (a.laws, a.table, a.varying, out, m))
    tasks["lr_curves"] = (_lr_figure, (_distinct_traces(a), max(set(lams), key=lams.count) if lams else 0.99, out))
    results = parallel.fork_map([(with_problems, (a.runset, fn, *args)) for fn, args in tasks.values()],
                                workers_for(a.runset, a.options))
    figs = {}
    for name, (drawn, problems) in zip(tasks, results):
        merge_problems(a.runset, problems)
        figs[name] = drawn
    return figs


def _lr_figure(traces, lam: float, out: Path) -> plots.Drawn:
    path = plots.lr_curves(traces, lam, out)
    return plots.Drawn([path] if path else [], 1, 1)


def _distinct_traces(a: Analysis, limit: int = 12) -> list[tuple[str, Any]]:
    from qat_lab.analysis.annealing_law import lr_trace

    used = a.table[a.table["used"]]
    keys = [k for k in ("schedule", "warmdown", "lr_mult", "steps") if k in used]
    out = []
    records = {r.run_id: r.record for r in a.runset.runs}
    varying = [k for k in keys if used[k].nunique(dropna=False) > 1] or keys[:1]
    for key, g in list(used.groupby(keys, sort=True))[:limit]:
        run_id = g["run_id"].iloc[0]
        tr = lr_trace(records[run_id], None) or lr_trace(records[run_id], a.runset.history(run_id))
        if tr is not None:
            out.append((" ".join(f"{k}={fmt_value(v)}" for k, v in zip(keys, key) if k in varying), tr))
    return out


def fits_json(a: Analysis) -> dict:
    return plain({
        "penalty_laws": a.laws,
        "annealing_laws": [cl.to_json() for cl in a.cell_laws],
        "interaction": a.interaction,
        "options": {"law_points": a.options.law_points, "holdout": a.options.holdout,
                    "holdout_sizes": sorted(a.holdout_sizes), "anneal_lambdas": list(a.options.anneal_lambdas),
                    "anneal_fit_warmdowns": a.options.anneal_fit_warmdowns},
    })


def write_report(a: Analysis, out: str | Path, argv: list[str] | None = None) -> Path:
    """Write every output file into `out` (created if needed); returns the path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(a, out)
    a.table.to_csv(out / "runs.csv", index=False)
    a.cells.to_csv(out / "cells.csv", index=False)
    a.comparisons.to_csv(out / "comparisons.csv", index=False)
    if len(a.coverage.missing):
        a.coverage.missing.to_csv(out / "missing.csv", index=False)
    (out / "fits.json").write_text(json.dumps(fits_json(a), indent=1, allow_nan=False) + "\n")
    try:
        version = metadata.version("qat_lab")
    except metadata.PackageNotFoundError:
        version = "?"
    argv = sys.argv if argv is None else argv
    head = ["# QAT sweep analysis", "",
            f"`{' '.join(shlex.quote(x) for x in ['qatlab-analyze', *argv[1:]])}` — "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, qat_lab {version}. "
            "Beside this file: runs.csv (one row per run), cells.csv (one row per cell x warmdown), comparisons.csv, "
            "fits.json (every fitted law with its data and diagnostics), PNG figures. Statistics: docs/analysis.md.", ""]
    body = (head + section_what_was_run(a) + section_missing(a) + section_glance(a) + section_cells(a, figs)
            + section_penalties(a) + section_comparisons(a) + section_interaction(a) + section_penalty_law(a, figs)
            + section_grid(a, figs) + section_annealing(a, figs))
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in a.seconds.items())
    body += ["---", f"Analysis time: {timing}.", ""]
    path = out / "report.md"
    path.write_text("\n".join(body))
    return path
