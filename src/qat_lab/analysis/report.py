"""Write the report directory: report.md, cells.csv, runs.csv, comparisons.csv, fits.json, PNGs.

report.md is meant to be read on its own: what was run, what is missing, what was found, with the
numbers and the pictures inline. The CSVs and fits.json hold everything the Markdown summarises.

Small data is said as such (docs/analysis.md, "Small data"): every finding carries its n (seeds,
sizes, cells), and where n cannot support a finding it is worded "not testable" with the reason:
one seed (no paired test, no interaction test), fewer than 3 sizes (no penalty law), <= 5 seeds
(the sign test cannot reach p < 0.05, so its p is no negative), one seed per cell (an annealing
optimum "matching" the empirical one is no evidence), a degenerate annealing fit (its predicted
optimum is undetermined).
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

from qat_lab.analysis import arms, parallel, plots, scorecard
from qat_lab.analysis.cells import CELL_ID, fmt_value, ordered_levels, size_text
from qat_lab.analysis.design import bit_groups
from qat_lab.analysis.markdown import figures, image, md_table, mean_sd, num, plain, pval, sig
from qat_lab.analysis.pipeline import Analysis, merge_problems, with_problems, workers_for
from qat_lab.analysis.stats import min_sign_p, sign_test_can_reject
from qat_lab.atomic import atomic_write
from qat_lab.quant import FP_BITS

MAX_LISTED = 50
"""Rows of excluded/missing runs listed in report.md (all of them are in runs.csv / missing.csv)."""


def level_head(key: str, value: Any) -> str:
    """A column heading for one level of the compared key: 'wd 0.33', 'quant.scale_rule=absmax'."""
    return f"wd {fmt_value(value)}" if key == "warmdown" else f"{key}={fmt_value(value)}"


def span(values) -> str:
    """'4' or '2 to 5' (the range of some counts)."""
    values = [int(v) for v in values]
    if not values:
        return "0"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo} to {hi}"


def n_text(cells: pd.DataFrame) -> str:
    """'n = 25 cells, 5 sizes, 4 seeds per cell' for a cells table."""
    if cells.empty:
        return "n = 0 cells"
    sizes, seeds = int(cells["size"].nunique()), span(cells["n"])
    return (f"n = {cells[CELL_ID].nunique()} cells, {sizes} size{'' if sizes == 1 else 's'}, "
            f"{seeds} seed{'' if seeds == '1' else 's'} per cell")


# ------------------------------------------------------------------------------ sections

def section_what_was_run(a: Analysis) -> list[str]:
    t, cov = a.table, a.coverage
    used = t[t["used"]]
    out = ["## What was run", ""]
    out.append("Sources: " + ", ".join(f"`{s}`" for s in a.runset.inputs) + ".")
    counts = ", ".join(f"{n} {s}" for s, n in sorted(cov.counts.items()))
    out.append(f"Run records: **{len(t)}** ({counts}); **{cov.n_used}** used in the statistics "
               f"(completed with a finite final loss, no duplicates: runs of equal identity).")
    out.append("")
    rows = []
    extra = set(a.axes) - set(a.design.named)
    for ax in a.axes:
        values = [fmt_value(v) for v in ordered_levels(used[ax])] if len(used) else []
        kind = "varies" if ax in a.varying else "constant"
        rows.append([ax + (" (config key)" if ax in extra else ""), ", ".join(values) if values else "-", kind])
    out += [md_table(["key", "values (used runs; * = does not apply: a quantiser setting of an FP16 run)", ""], rows),
            ""]
    if extra:
        out.append(f"Config keys that vary beyond the named axes: {', '.join(sorted(extra))}. Each is a column of "
                   "runs.csv and cells.csv and part of every cell; content fingerprints are shortened to their first "
                   "10 characters here, full in the CSVs.")
    others = [k for k in a.along.shown if k != "bits"]
    out.append(f"Compared within cells: **{a.key}** (`--compare`); a cell is every other key and the seed"
               + (f" (cells differ in bits, {', '.join(others)})." if others else " (cells differ in bits only)."))
    sizes = used[["model", "size"]].drop_duplicates().sort_values("size") if "model" in used else pd.DataFrame()
    if len(sizes):
        listed = [f"{m} = {int(s):,}" if pd.notna(s) else f"{m} = ?" for m, s in sizes.itertuples(index=False)]
        out.append("Model sizes (non-embedding parameters): " + ", ".join(listed) + ".")
    if len(a.cells):
        out.append(f"Seeds per cell x {a.key}: {span(a.cells['n'])}.")
    out.append("")
    return out


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
        shown = [x for x in ["sweep_id", *a.design.keys] if x in cov.missing and cov.missing[x].nunique(dropna=False) > 1
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


def unpaired(a: Analysis) -> list[tuple[str, int]]:
    """(reason, count) of used quantised runs without an FP16 partner, most frequent first."""
    notes = a.table.loc[a.table["used"] & (a.table["penalty_note"] != ""), "penalty_note"]
    return list(notes.value_counts().items())


def section_glance(a: Analysis) -> list[str]:
    out = ["## Findings at a glance", ""]
    if not a.coverage.n_used:
        out.append("- **No usable run**: every record is listed above with the reason it was left out.")
    key = a.key
    compared = a.optima[a.optima["n_levels"] > 1] if len(a.optima) else a.optima
    if len(compared):
        counts = compared[f"best_{key}"].map(fmt_value).value_counts()
        cells = a.cells[a.cells[CELL_ID].isin(compared[CELL_ID])]
        text = (f"- **Optimal {key}** (argmin of the seed-mean final loss; {n_text(cells)}): "
                + ", ".join(f"{w} in {n}" for w, n in counts.items()) + ".")
        if len(compared) < len(a.optima):
            text += f" {len(a.optima) - len(compared)} cell(s) have a single level of {key}: nothing to compare there."
        if int(cells["n"].max()) == 1:
            text += " One seed per cell: each optimum is a single run, read as a description, not a tested finding."
        out.append(text)
    out += _glance_comparisons(a)
    out += _glance_interaction(a.interaction, key)
    q = a.cells[(a.cells["bits"] != FP_BITS) & a.cells["optimal"]] if len(a.cells) else a.cells
    if len(q) and q["penalty_n"].sum():
        by_bits = q.groupby("bits")
        parts = [f"{plots.bits_name(b)} {g['penalty_mean'].mean():+.4f}"
                 + (f" (range {g['penalty_mean'].min():+.4f} to {g['penalty_mean'].max():+.4f})"
                    if g["penalty_mean"].min() != g["penalty_mean"].max() else "")
                 + f" [{n_text(g)}]"
                 for b, g in sorted(by_bits, key=lambda x: -x[0])]
        out.append(f"- **Penalty at each cell's optimal {key}** (nats/token, vs FP16): " + "; ".join(parts) + ".")
    for reason, count in unpaired(a):
        out.append(f"- **No penalty** for {count} used quantised run(s): {reason} (section 2).")
    out += _glance_laws(a)
    if len(a.ratios):
        r = a.ratios.groupby("bits")
        out.append("- **Grid-distance ratio** d(QAT)/d(FP16), same cell and seed: " + "; ".join(
            f"{plots.bits_name(b)} pre-warmdown {g['pre_warmdown_mean'].mean():.3f}, final {g['final_mean'].mean():.3f} "
            f"(n = {int(g['final_n'].sum())} runs in {len(g)} cells)" for b, g in r) + " (1 = as far from the grid as "
            "FP16 weights).")
    out += _glance_annealing(a)
    if a.claims:
        out.append("- **The paper's claims** (section 8): " + "; ".join(f"{c['id']} {c['verdict']}" for c in a.claims)
                   + ".")
    out.append("")
    return out


def _glance_comparisons(a: Analysis) -> list[str]:
    c = a.comparisons
    if c.empty:
        return [f"- **Paired comparisons**: none possible (every cell has a single {a.key})."] if len(a.cells) else []
    sig_n = int(c["significant"].sum())
    tested = c[c["p_t"].notna()]
    if tested.empty:
        return [f"- **Paired comparisons** along {a.key}: not testable ({len(c)} comparisons, one common seed each: "
                "no paired test)."]
    text = (f"- **Paired comparisons** against each cell's best {a.key}: {sig_n} of {len(tested)} testable comparisons "
            f"significantly worse (Holm-adjusted t-test p < 0.05; {span(tested['n'])} seeds per comparison)")
    if len(c) > len(tested):
        text += f"; {len(c) - len(tested)} not testable (one common seed)"
    if not sign_test_can_reject(int(tested["n"].max())):
        text += (f"; with {int(tested['n'].max())} or fewer seeds the sign test cannot reach p < 0.05 "
                 f"({int(tested['n'].max())}/{int(tested['n'].max())} wins give "
                 f"{min_sign_p(int(tested['n'].max())):.3g}), so its p is no evidence either way")
    return [text + "."]


def _glance_interaction(groups: list[dict], key: str, listed: int = 4) -> list[str]:
    """One bullet per group of cells differing only in bits (a summary line when there are many)."""
    if not groups:
        return []
    if len(groups) > listed:
        moves = sum(g["moves"] for g in groups)
        tested = [g for g in groups if g["f_test"]["df_num"]]
        sig_n = sum(g["f_test"]["p"] < 0.05 for g in tested)
        text = (f"- **Optimum by bits**: moves with bits in {moves} of {len(groups)} groups of cells; interaction "
                f"F-test p < 0.05 (uncorrected) in {sig_n} of {len(tested)} testable groups")
        if len(tested) < len(groups):
            text += f"; {len(groups) - len(tested)} not testable (one seed: no interaction test)"
        return [text + " (section 4)."]
    out = []
    for g in groups:
        opt = ", ".join(f"{plots.bits_name(b)} {fmt_value(w)}" for b, w in g["optimum_by_bits"].items())
        f = g["f_test"]
        seeds = span(g["seeds_by_bits"].values())
        if f["df_num"]:
            ftxt = f"interaction F = {sig(f['F'])}, p = {pval(f['p'])}"
        else:
            ftxt = f"interaction not testable ({f['note']})"
        moves = "moves with bits" if g["moves"] else "the same for every bit-width"
        if seeds == "1":
            moves += " (one seed: not a tested finding)"
        out.append(f"- **Optimum of {key} by bits** ({g['group']}; {seeds} seeds): {opt}; {moves}; {ftxt}.")
    return out


def _glance_laws(a: Analysis) -> list[str]:
    out = []
    fitted = [law for law in a.laws if law["laws"]]
    if fitted:
        by_bits: dict[int, list[float]] = {}
        for law in fitted:
            by_bits.setdefault(int(law["axes"]["bits"]), []).append(law["laws"][0]["params"]["b"])
        slopes = [f"{plots.bits_name(b)} b = {np.median(v):+.3g}"
                  + (f" ({min(v):+.3g} to {max(v):+.3g} over {len(v)} families)" if len(v) > 1 else "")
                  for b, v in sorted(by_bits.items(), reverse=True)]
        families = f"{len(fitted)} famil{'y' if len(fitted) == 1 else 'ies'}"
        sizes = span(len(law["sizes"]) for law in fitted)
        out.append(f"- **Penalty law** P = a + b ln N fitted in {families} ({sizes} sizes each): {'; '.join(slopes)} "
                   "(nats/token per e-fold of N; negative = the penalty shrinks with size).")
        cov = [law["laws"][0] for law in fitted if law["laws"][0].get("holdout_coverage")]
        if cov:
            inside = sum(c["holdout_coverage"]["inside"] for c in cov)
            total = sum(c["holdout_coverage"]["n"] for c in cov)
            out.append(f"- **Held-out sizes** inside their 95% prediction interval: {inside}/{total} (t with "
                       f"{span(c['dof'] for c in cov)} dof; mean half-width ±"
                       f"{np.mean([c['pi_half_width_mean'] for c in cov]):.3g} nats: that is how wide 'inside' is).")
    elif a.laws:
        out.append(f"- **Penalty law**: not testable ({a.laws[0]['note']}).")
    return out


def _glance_annealing(a: Analysis) -> list[str]:
    fits = [cl for cl in a.cell_laws if cl.best]
    if not fits:
        return []
    held = [cl.chosen["heldout"] for cl in fits if not math.isnan(cl.chosen["heldout"]["r2"])]
    text = f"- **Annealing law** fitted in {len(fits)} warmdown cell(s)"
    if held:
        text += (f"; held-out curves: median R² {np.median([h['r2'] for h in held]):.3f}, "
                 f"median MAE {np.median([h['mae'] for h in held]):.4f} nats")
    undetermined = [cl for cl in fits if cl.undetermined]
    if undetermined:
        text += f"; predicted optimum undetermined in {len(undetermined)} (degenerate fit: section 7)"
    seeds = {cl.cell: min(c.n_seeds for c in cl.curves) for cl in fits}
    judged = [cl for cl in fits if cl.empirical_optimum is not None and not cl.undetermined]
    evidence = [cl for cl in judged if seeds[cl.cell] >= 2]
    if evidence:
        same = sum(cl.chosen["predicted_optimum_among_tested"] == cl.empirical_optimum for cl in evidence)
        text += (f"; its optimum among the tested warmdowns matches the empirical one in {same}/{len(evidence)} cells "
                 "with 2+ seeds")
    elif judged:
        text += ("; agreement with the empirical optimum not testable (one seed per cell: the empirical optimum is a "
                 "single noisy run)")
    return [text + "."]


def _wide(cells: pd.DataFrame, key: str, value: str, sd: str, n: str, digits: int = 4,
          mark_best: bool = True) -> tuple[list[str], list[list[str]]]:
    """One row per cell, one column per level of `key`: 'mean ± sd (n)', the optimum in bold."""
    levels = ordered_levels(cells[key])
    by_cell: dict[str, dict] = {}
    for r in cells.to_dict("records"):
        by_cell.setdefault(r[CELL_ID], {})[repr(r[key])] = r
    rows = []
    for cell, per_level in by_cell.items():
        row = [cell, size_text(next(iter(per_level.values()))["size"])]
        for w in levels:
            h = per_level.get(repr(w))
            if h is None:
                row.append("-")
                continue
            text = mean_sd(h[value], h[sd], int(h[n]), digits)
            row.append(f"**{text}**" if mark_best and h["optimal"] else text)
        rows.append(row)
    return ["cell", "size", *(level_head(key, w) for w in levels)], rows


def section_cells(a: Analysis, figs: dict) -> list[str]:
    out = [f"## 1. Final loss by cell and {a.key}", ""]
    if a.cells.empty:
        return out + ["No usable runs.", ""]
    out.append("Seed mean ± sd (n seeds) of the final val loss (nats/token, after the quantise -> dequantise round "
               "trip at the run's bits). **Bold**: the cell's optimum (argmin of the seed mean). "
               f"A cell is every key except {a.key} and the seed. All numbers: cells.csv.")
    out.append("")
    head, rows = _wide(a.cells, a.key, "val_loss_mean", "val_loss_sd", "n")
    out += [md_table(head, rows), ""]
    out += figures(figs.get("loss_vs_level"),
                   f"Final val loss vs {a.key}, one line per bit-width; error bars: seed sd; star: the optimum",
                   "groups of cells")
    return out


def section_penalties(a: Analysis) -> list[str]:
    out = ["## 2. Quantisation penalties", ""]
    q = a.cells[a.cells["bits"] != FP_BITS] if len(a.cells) else a.cells
    reasons = unpaired(a)
    if q.empty or not q["penalty_n"].sum():
        out.append("No quantised run has a bits=16 partner (equal on every other key), so there is no penalty.")
        out += [f"- {count} run(s): {reason}." for reason, count in reasons]
        return out + [""]
    out.append("P_b = L(bits=b) - L(bits=16) per seed, against the bits=16 run equal on every other key of the run's "
               "identity (seed included; quantiser settings do not apply at bits=16), then seed mean ± sd. "
               "Positive = the quantised model is worse.")
    out.append("")
    head, rows = _wide(q, a.key, "penalty_mean", "penalty_sd", "penalty_n", mark_best=False)
    out += [md_table(head, rows), ""]
    if reasons:
        out.append("No penalty (no FP16 partner), left blank rather than paired with another setting:")
        out += [f"- {count} used quantised run(s): {reason}." for reason, count in reasons]
        out.append("")
    return out


def section_comparisons(a: Analysis) -> list[str]:
    key = a.key
    out = [f"## 3. Is the best {key} distinguishable from the others?", ""]
    c = a.comparisons
    if c.empty:
        return out + [f"Nothing to compare: no cell has two levels of {key}.", ""]
    out.append(f"Within each cell, every {key} against the cell's best, seed by seed: d = L(level) - L(best) "
               "(positive: the best won). t has n-1 dof; z is the same statistic against the normal; wins = seeds the "
               "best won; the sign test is exact (ties dropped). Holm's correction runs over all "
               f"{len(c)} comparisons (all cells together); 'sig.' = Holm-adjusted t p < 0.05. The best is picked on the "
               "same data, so treat a significant result as 'clearly worse than the best seen'.")
    if (c["n"] < 2).any():
        out.append("")
        out.append(f"**{int((c['n'] < 2).sum())} comparison(s) have a single common seed: not testable (no t, z or "
                   "spread, only the sign).**")
    few = c[c["n"].between(1, 5)]
    if len(few):
        out.append("")
        out.append(f"With 5 or fewer seeds the sign test cannot reach p < 0.05 (5/5 gives 0.0625): for the {len(few)} "
                   "comparison(s) with so few seeds its p is reported, not read as a negative.")
    out.append("")
    best_col = f"best_{key}"
    rows = [[r[CELL_ID], fmt_value(r[key]), fmt_value(r[best_col]), f"{r['mean']:+.4f}", sig(r["t"]),
             pval(r["p_t"]), pval(r["p_t_holm"]), pval(r["p_z"]), f"{r['wins']}/{r['n']}", pval(r["p_sign"]),
             pval(r["p_sign_holm"]), "yes" if r["significant"] else ""] for _, r in c.iterrows()]
    out += [md_table(["cell", key, "best", "mean d", "t (= z)", "p_t", "p_t Holm", "p_z", "wins", "p_sign",
                      "p_sign Holm", "sig."], rows), "", "All columns: comparisons.csv.", ""]
    return out


def section_interaction(a: Analysis) -> list[str]:
    key = a.key
    out = [f"## 4. Does the optimal {key} move with bits?", ""]
    if not a.interaction:
        return out + [f"Not testable here: it needs at least two bit-widths with two or more levels of {key} each, in "
                      "a group of cells that differ only in bits.", ""]
    out.append(f"Groups of cells that differ only in bit-width (an FP16 cell, whose quantiser settings are *, belongs "
               f"to every group it matches). The F-test compares loss ~ bits + {key} + seed with the model that adds "
               f"every bits x {key} term (OLS, seeds as blocks; it needs two or more seeds). The last column reads the "
               f"paired comparisons of section 3: is FP16's optimum significantly worse at the other bit-width?")
    out.append("")
    rows = []
    for g in a.interaction:
        opt = ", ".join(f"{plots.bits_name(b)}: {fmt_value(w)}" for b, w in g["optimum_by_bits"].items())
        f = g["f_test"]
        ftxt = (f"F({f['df_num']}, {f['df_den']}) = {sig(f['F'])}, p = {pval(f['p'])}" if f["df_num"]
                else f"not testable: {f['note']}")
        cost = "; ".join(f"{plots.bits_name(e['bits'])}: {e['mean_diff']:+.4f} at {fmt_value(e['fp16_optimum'])}, "
                         f"{e['wins']}/{e['n']} seeds, Holm p_t {pval(e['p_t_holm'])}"
                         for e in g["fp16_optimum_elsewhere"]) or "-"
        rows.append([g["group"], opt, span(g["seeds_by_bits"].values()), "yes" if g["moves"] else "no", ftxt, cost])
    out += [md_table(["group", f"optimal {key}", "seeds", "moves?", "interaction test", "FP16's optimum at other bits"],
                     rows), ""]
    return out


def section_penalty_law(a: Analysis, figs: dict) -> list[str]:
    out = ["## 5. Penalty law P(N) = a + b ln N", ""]
    if not a.laws:
        return out + ["No penalties to fit (no quantised run with an FP16 partner).", ""]
    mode = a.options.law_points
    out.append(f"OLS of the penalty on ln N (N = non-embedding parameters; statsmodels), one law per family (every "
               f"key but the model and the seed). Points: "
               f"{'per-size seed means' if mode == 'means' else 'every seed-level point'} (--law-points). 95% prediction "
               "interval for a new point: yhat ± t(0.975, n-2) s sqrt(1 + 1/n + (x0 - xbar)²/Sxx). Power law: "
               "ln P = a + b ln N (only where every P > 0). Fewer than 3 sizes: not testable (no residual dof).")
    if a.holdout_sizes:
        out.append(f"Held out of the fit and predicted: {', '.join(size_text(s) for s in sorted(a.holdout_sizes))}.")
    for note in a.holdout_notes:
        out.append(f"- {note}")
    out.append("")
    rows = []
    for fam in a.laws:
        if not fam["laws"]:
            rows.append([fam["family"], "-", "-", "-", "-", "-", "-", "-", f"not testable: {fam['note']}"])
            continue
        for law in fam["laws"]:
            cov = law.get("holdout_coverage")
            rows.append([fam["family"], law["kind"], f"{law['params']['a']:.4g} ± {law['se']['a']:.2g}",
                         f"{law['params']['b']:+.4g} ± {law['se']['b']:.2g}", num(law["r2"], 3),
                         f"{law['n']} ({law['dof']} dof)", f"{law['t_crit']:.2f}", f"±{law['pi_half_width_mean']:.3g}",
                         f"{cov['inside']}/{cov['n']} inside" if cov else (fam["note"] if law["kind"] == "log-linear"
                                                                             else "")])
    head = ["family", "law", "a ± se", "b ± se", "R²", "points", "t crit", "mean PI half-width", "held out / note"]
    out += [md_table(head, rows), ""]
    t_small = [law for fam in a.laws for law in fam["laws"] if law["dof"] <= 3]
    if t_small:
        out.append(f"With so few points the t quantile is large (e.g. {t_small[0]['t_crit']:.2f} at {t_small[0]['dof']} "
                   "dof): the intervals are wide, and a held-out point inside one is weak evidence.")
        out.append("")
    out += figures(figs.get("penalty_law"),
                   "Penalty vs size with the log-linear law and its 95% prediction band (one colour per bit-width)",
                   "panels")
    return out


def section_grid(a: Analysis, figs: dict) -> list[str]:
    out = ["## 6. Weight-to-grid distance", ""]
    out.append("d = mean |W/s - round(W/s)| over the quantised matrices (0.25: weights spread uniformly between grid "
               "points; 0: on the grid). Ratio = d(QAT run) / d(FP16 run), same cell and seed, at the pre-warmdown "
               "snapshot and at the end. Both must have been measured with the same ruler: FP16 runs are measured on "
               "the probe grid, so only bit-widths measured on that grid get a ratio, and the FP16 run must have "
               "the QAT run's quantiser settings (read from its own config).")
    for reason, bits in a.missing_ratios.items():
        out.append(f"No ratio for {', '.join(plots.bits_name(b) for b in bits)} run(s): {reason}.")
    out.append("")
    if len(a.ratios):
        rows = [[r[CELL_ID], fmt_value(r[a.key]), f"INT{int(r['grid_bits'])}",
                 mean_sd(r["pre_warmdown_mean"], r["pre_warmdown_sd"], int(r["pre_warmdown_n"]), 3),
                 mean_sd(r["final_mean"], r["final_sd"], int(r["final_n"]), 3)] for _, r in a.ratios.iterrows()]
        out += [md_table(["cell", a.key, "grid", "ratio pre-warmdown", "ratio final"], rows), ""]
    else:
        out += ["No ratio: no quantised run has an FP16 partner measured with the same ruler.", ""]
    out += figures(figs.get("grid_distance"), "Grid distance over training (seed mean), one line per bit-width, each on "
                   "its own grid; dashed: warmdown starts; dotted: 0.25", "panels")
    return out


def pct(x: float | None) -> str:
    """A relative error as a percentage ('-' when there is none)."""
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.2f}%"


def section_annealing(a: Analysis, figs: dict) -> list[str]:
    out = ["## 7. LR-annealing scaling law", ""]
    if not a.options.anneal:
        return out + ["Skipped (--no-anneal).", ""]
    columns = sorted({cl.column for cl in a.cell_laws if cl.column})
    out.append("L(s) = L0 + A S1^-α - C S2 (Tissue et al. 2024) per cell, on the seed-mean loss curve of each "
               f"warmdown ({' / '.join(columns) or 'train_loss'}: curve_loss, the loss on a fixed held-out batch, where "
               "the runs logged it, else the per-step train_loss); S1, S2 from the LR multiplier of every optimiser "
               "step (warmup at peak), fitted on post-warmup "
               "points with a Huber loss (δ = 1e-3) on log residuals, L-BFGS-B with parameters ≥ 0 and many starts. "
               "The law is fitted on some warmdowns' curves and predicts the others from their LR traces alone. "
               "λ (the annealing momentum) is chosen on a grid by the fit objective (default: scaled to the run "
               "length T, λ = 1 − 1/τ with τ = T × 0.01, 0.03, 0.1, 0.3); the sensitivity table shows "
               "what each λ would say. The Multi-Power Law (Luo et al. 2025) is fitted on the same curves; each law's "
               "held-out error is the mean |predicted − observed| / observed final loss of the curves it did not see, "
               "and the better law predicts the cell's optimum ('law used'; Tissue's without a held-out curve).")
    if a.key != "warmdown":
        out.append("The law is about warmdowns whatever --compare is: its cells are every key but warmdown and the "
                   "seed.")
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
        predicted = fmt_value(cl.predicted_optimum if cl.predicted_optimum is not None else "-")
        tested = fmt_value(row["predicted_optimum_among_tested"])
        if cl.undetermined:
            predicted, tested = f"*undetermined* ({predicted})", f"*undetermined* ({tested})"
        rows.append([cl.cell, ", ".join(fmt_value(w) for w in cl.fit_warmdowns),
                     ", ".join(fmt_value(w) for w in cl.heldout_warmdowns) or "-",
                     f"{p['L0']:.3f}, {p['A']:.3g}, {p['alpha']:.3f}, {p['C']:.3g}", f"{b.lam:g}",
                     f"{num(row['fit']['r2'], 3)} / {num(row['fit']['mae'], 4)}",
                     f"{num(row['heldout']['r2'], 3)} / {num(row['heldout']['mae'], 4)}",
                     predicted, tested, fmt_value(cl.empirical_optimum) if cl.empirical_optimum is not None else "-",
                     str(min(c.n_seeds for c in cl.curves)), status])
        err = cl.heldout_error
        rows[-1][7:7] = [f"{pct(err.get('tissue'))} / {pct(err.get('mpl'))}", cl.law_used]
        rows[-1].append("; ".join(cl.edge_flags) or "-")
    out += [md_table(["cell", "fit on wd", "predicted wd", "L0, A, α, C", "λ", "fit R² / MAE", "held-out R² / MAE",
                      "held-out final error Tissue / MPL", "law used", "predicted optimum", "predicted (tested wd)",
                      "empirical optimum", "seeds", "optimizer", "flags"], rows), ""]
    edged = [cl for cl in fits if cl.edge_flags]
    if edged:
        out.append(f"**At the edge** in {len(edged)} of {len(fits)} cell(s) (flags column): an optimum at warmdown 0 "
                   "or 1 lies at the end of what the law was asked (the law may not describe schedules that "
                   "extreme); a best λ at the end of its grid may lie beyond it (widen --anneal-lambdas).")
        out.append("")
    undetermined = [cl for cl in fits if cl.undetermined]
    if undetermined:
        out.append(f"**Predicted optimum undetermined** in {len(undetermined)} of {len(fits)} cell(s): the fit is "
                   "degenerate (a parameter at its bound and the predicted optimum moving across the λ grid by more "
                   "than one candidate step, 0.02), so the number is no finding:")
        out += [f"- {cl.cell}: {cl.undetermined}." for cl in undetermined[:MAX_LISTED]]
        out.append("")
    if any(cl.best.at_bound for cl in fits):
        out.append("A parameter at its bound 0 (usually L0) means the curves did not determine it: short runs still in "
                   "their fast early descent fit a pure power law; read predictions far from the fitted curves with care.")
        out.append("")
    out.append("MAE in nats/token over post-warmup steps. 'predicted optimum' is the argmin of the law's final loss "
               "over warmdown fractions 0, 0.02, ..., 1; 'predicted (tested wd)' restricts it to the warmdowns run. "
               "With one seed per cell the empirical optimum is a single run: a match is no evidence.")
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


def section_claims(a: Analysis) -> list[str]:
    out = ["## 8. The paper's claims, scored", ""]
    out.append("Each claim of the study (METHOD section 1) against this data: the statistic, its n, and a verdict "
               "(supported / contradicted / inconclusive: testable but undecided / not testable, with what would make "
               "it testable). Decision rules: docs/analysis.md, \"Claims\"; tolerances: INT8 ≈ 0 within "
               f"±{scorecard.ZERO_MARGIN:g} nats, ratio ≈ 1 within ±{scorecard.RATIO_MARGIN:g} (90% interval, i.e. "
               "two one-sided 5% tests); significance is Holm-adjusted paired t p < 0.05.")
    out.append("")
    rows = []
    for c in a.claims:
        why = c["reason"]
        if c["to_test"]:
            why = f"{why}; to test: {c['to_test']}" if why else f"to test: {c['to_test']}"
        rows.append([c["id"], c["claim"], f"**{c['verdict']}**", c["statistic"], scorecard.fmt_n(c["n"]), why or "-"])
    out += [md_table(["", "claim", "verdict", "statistic", "n", "why / what would make it testable"], rows), ""]
    return out


# ------------------------------------------------------------------------------ files

def make_figures(a: Analysis, out: Path) -> dict[str, plots.Drawn]:
    """Every figure of the report, one task per kind, spread over the analysis's workers."""
    m = a.options.max_plots
    fits = [cl for cl in a.cell_laws if cl.best]
    lams = [cl.best_lam for cl in fits]
    tasks: dict[str, parallel.Task] = {}
    # The slowest figures first, so that a worker is not left with the longest one at the end.
    wd = a.by_warmdown or a.along  # the grid figure marks where the warmdown starts: warmdown groups
    tasks["grid_distance"] = (plots.grid_distance_over_training,
                              (wd.table(a.table), a.runset.history, wd.group_axes, wd.group_shown, out, m))
    tasks["annealing"] = (plots.annealing_fits, (fits, out, m))
    if len(a.cells):
        groups = bit_groups(a.cells, a.along.group_axes)
        tasks["loss_vs_level"] = (plots.loss_vs_level, (a.cells, a.key, groups, a.along.group_shown, out, m))
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
        "compare": a.key,
        "interaction": a.interaction,
        "interaction_warmdown": a.by_warmdown.interaction if a.by_warmdown not in (None, a.along) else None,
        "claims": a.claims,
        "options": {"compare": a.key, "law_points": a.options.law_points, "holdout": a.options.holdout,
                    "holdout_sizes": sorted(a.holdout_sizes), "anneal_lambdas": (list(a.options.anneal_lambdas) if a.options.anneal_lambdas
                                                       else "scaled to the run length"),
                    "anneal_fit_warmdowns": a.options.anneal_fit_warmdowns},
    })


def write_report(a: Analysis, out: str | Path, argv: list[str] | None = None) -> Path:
    """Write every output file into `out` (created if needed); returns the path of report.md."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(a, out)
    _write_csv(a.table, out / "runs.csv")
    _write_csv(a.cells, out / "cells.csv")
    _write_csv(a.comparisons, out / "comparisons.csv")
    if len(a.coverage.missing):
        _write_csv(a.coverage.missing, out / "missing.csv")
    atomic_write(out / "fits.json", json.dumps(fits_json(a), indent=1, allow_nan=False) + "\n")
    try:
        version = metadata.version("qat_lab")
    except metadata.PackageNotFoundError:
        version = "?"
    argv = sys.argv if argv is None else argv
    head = ["# QAT sweep analysis", "",
            f"`{' '.join(shlex.quote(x) for x in ['qatlab-analyze', *argv[1:]])}` — "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, qat_lab {version}. "
            f"Beside this file: runs.csv (one row per run), cells.csv (one row per cell x {a.key}), comparisons.csv, "
            "fits.json (every fitted law with its data and diagnostics), PNG figures. Statistics: docs/analysis.md.", ""]
    body = (head + section_what_was_run(a) + section_missing(a) + section_glance(a) + section_cells(a, figs)
            + section_penalties(a) + section_comparisons(a) + section_interaction(a) + section_penalty_law(a, figs)
            + section_grid(a, figs) + section_annealing(a, figs) + section_claims(a)
            + arms.section(a.table, a.varying, a.by_warmdown.interaction if a.by_warmdown else [], number=9))
    if arms.applies(a.table):
        _write_csv(arms.arms_frame(arms.cell_arms(a.table, a.varying)), out / "arms.csv")
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in a.seconds.items())
    body += ["---", f"Analysis time: {timing}.", ""]
    return atomic_write(out / "report.md", "\n".join(body))


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    # to_csv without a path returns the text it would have written (same terminator, UTF-8 here).
    atomic_write(path, frame.to_csv(index=False))
