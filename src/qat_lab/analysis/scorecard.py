"""The paper's claims, scored on this data (METHOD section 1; docs/analysis.md, "Claims").

Each claim gets a statistic, its n, and one of four verdicts:

- supported     the decision rule below holds;
- contradicted  the data say the opposite, at the stated significance;
- inconclusive  testable here, but the statistic decides neither way;
- not testable  the data cannot answer it; `to_test` says what is missing (sizes, seeds, bits,
                --holdout-sizes).

Decision rules (constants below; every p-value two-sided, alpha = 0.05):

C1  penalty order INT4 > INT6 > INT8 ~ 0. Penalties of runs sharing an FP16 partner (same
    settings and seed) are matched: d = P_4 - P_6 and d = P_6 - P_8, one-sample t (Holm over
    the two); an order holds if mean d > 0 and Holm p < 0.05, is reversed if mean d < 0 and
    Holm p < 0.05. INT8 ~ 0 is an equivalence test (TOST): the 90% t interval of the mean INT8
    penalty inside +-ZERO_MARGIN holds, entirely outside it fails. Supported if all three hold.
C2  the optimal warmdown does not move with bits at FP16/INT8/INT6. In each group of cells that
    differ only in bits (two or more of 16, 8, 6, two or more warmdowns, two or more seeds in every
    cell): a move is significant when, at a bit-width whose optimum differs from another's, that
    other optimum is Holm-significantly worse (paired t). Contradicted by any significant move;
    supported when the optimum is the same at every bit-width in every testable group.
C3  pre-warmdown grid-distance ratio INT6/FP16 ~ 1: TOST on the seed-level ratios, margin
    RATIO_MARGIN: the 90% t interval of the mean inside [1 - m, 1 + m] supports, entirely
    outside contradicts.
C4  the INT6 penalty law fitted on some sizes predicts held-out sizes inside 95% prediction
    intervals: supported when every held-out point is inside; contradicted when the misses are
    more than a 95% interval allows (exact binomial test of misses against 5%, p < 0.05).
C5  INT4: no significant warmdown preference below a size, a decisive one above. Per INT4 cell:
    'decisive' = the best warmdown beats every other Holm-significantly (paired t) AND on every
    seed; 'none' = no comparison significant; else 'partial'. A size takes its cells' class
    (mixed: partial). Supported when the sizes in order are none..., decisive... (both present);
    contradicted when a decisive size lies below a none size.

The warmdown comparisons (and their Holm family) are those of the analysis along warmdown,
whatever --compare is.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from qat_lab.analysis import stats as paired_stats
from qat_lab.analysis.cells import CELL_ID, size_text
from qat_lab.quant import FP_BITS

ALPHA = 0.05
ZERO_MARGIN = 0.01
"""nats/token: a penalty within +-0.01 of zero counts as 'about 0' (C1, INT8)."""
RATIO_MARGIN = 0.10
"""A grid-distance ratio within 1 +- 0.10 counts as 'about 1' (C3; the paper reports 1.04)."""
EQUIVALENCE_LEVEL = 0.90
"""Two one-sided tests at 5% each: the 90% interval inside the margin."""
PI_LEVEL = 0.95
MIN_REPLICATES = 2
"""A t statistic needs a spread: two or more values."""

SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE = "supported", "contradicted", "inconclusive", "not testable"
CLAIMS = {
    "C1": "Penalty order INT4 > INT6 > INT8 ≈ 0",
    "C2": "The optimal warmdown does not move with bits at FP16/INT8/INT6",
    "C3": "Pre-warmdown grid-distance ratio INT6/FP16 ≈ 1",
    "C4": "The INT6 penalty law fitted on some sizes predicts held-out sizes inside 95% PIs",
    "C5": "INT4: no significant warmdown preference below a size, a decisive one above",
}


def _claim(cid: str, verdict: str, statistic: str, n: dict[str, Any], reason: str = "", to_test: str = "",
           details: Any = None) -> dict:
    return {"id": cid, "claim": CLAIMS[cid], "verdict": verdict, "statistic": statistic, "n": n, "reason": reason,
            "to_test": to_test, "details": details if details is not None else {}}


def _sizes(frame: pd.DataFrame) -> int:
    return int(frame["size"].nunique()) if len(frame) else 0


def _seeds(frame: pd.DataFrame) -> int:
    return int(frame["seed"].nunique()) if len(frame) else 0


def interval(values: np.ndarray, level: float) -> tuple[float, float]:
    """The t interval of the mean (scipy), a point when every value is the same."""
    values = np.asarray(values, dtype=float)
    if values.std() == 0:
        return float(values.mean()), float(values.mean())
    with warnings.catch_warnings():  # nearly equal values: scipy warns about precision, the interval stands
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = stats.ttest_1samp(values, 0.0).confidence_interval(level)
    return float(ci.low), float(ci.high)


def equivalence(values: np.ndarray, centre: float, margin: float) -> tuple[str, tuple[float, float]]:
    """'holds' (interval inside centre +- margin), 'fails' (entirely outside) or 'undecided'."""
    lo, hi = interval(values, EQUIVALENCE_LEVEL)
    if centre - margin <= lo and hi <= centre + margin:
        return "holds", (lo, hi)
    if lo > centre + margin or hi < centre - margin:
        return "fails", (lo, hi)
    return "undecided", (lo, hi)


# ------------------------------------------------------------------------------ C1

def _matched(table: pd.DataFrame) -> pd.DataFrame:
    """Penalties by FP16 partner (one row per partner: same settings and seed) and bits."""
    q = table[table["used"] & table["penalty"].notna() & (table["bits"] != FP_BITS)]
    return q.groupby(["fp_partner", "bits"])["penalty"].mean().unstack("bits") if len(q) else pd.DataFrame()


def penalty_order(table: pd.DataFrame) -> dict:
    wide = _matched(table)
    q = table[table["used"] & table["penalty"].notna() & (table["bits"] != FP_BITS)]
    have = {int(b) for b in wide.columns} if len(wide) else set()
    parts, missing = [], []
    for hi_b, lo_b in ((4, 6), (6, 8)):
        name = f"INT{hi_b} > INT{lo_b}"
        if hi_b not in have or lo_b not in have:
            missing.extend(f"bits={b}" for b in (hi_b, lo_b) if b not in have)
            parts.append({"part": name, "status": NOT_TESTABLE, "n": 0})
            continue
        d = (wide[hi_b] - wide[lo_b]).dropna().to_numpy()
        if len(d) < MIN_REPLICATES:
            parts.append({"part": name, "status": NOT_TESTABLE, "n": len(d)})
            missing.append(f"2+ runs of INT{hi_b} and INT{lo_b} sharing an FP16 partner")
            continue
        p = paired_stats.paired(d)
        parts.append({"part": name, "n": len(d), "mean": p.mean, "t": p.t, "p": p.p_t})
    tested = [x for x in parts if "p" in x]
    for x, ph in zip(tested, paired_stats.holm(np.array([x["p"] for x in tested]))):
        x["p_holm"] = float(ph)
        x["status"] = ("holds" if x["mean"] > 0 and ph < ALPHA else "fails" if x["mean"] < 0 and ph < ALPHA
                       else "undecided")
    if 8 in have and wide[8].notna().sum() >= MIN_REPLICATES:
        p8 = wide[8].dropna().to_numpy()
        status, (lo, hi) = equivalence(p8, 0.0, ZERO_MARGIN)
        parts.append({"part": f"INT8 ≈ 0 (±{ZERO_MARGIN:g})", "n": len(p8), "mean": float(p8.mean()),
                      "ci90": [lo, hi], "status": status})
    else:
        parts.append({"part": "INT8 ≈ 0", "status": NOT_TESTABLE, "n": int(wide[8].notna().sum()) if 8 in have else 0})
        missing.append("bits=8" if 8 not in have else "2+ INT8 runs with an FP16 partner")
    statuses = [x["status"] for x in parts]
    n = {"pairs": int(len(wide)), "sizes": _sizes(q), "seeds": _seeds(q)}
    text = "; ".join(_part_text(x) for x in parts)
    if "fails" in statuses:
        return _claim("C1", CONTRADICTED, text, n, details=parts)
    if NOT_TESTABLE in statuses:
        need = ", ".join(dict.fromkeys(missing))
        return _claim("C1", NOT_TESTABLE, text, n, reason="part of the order cannot be tested",
                      to_test=f"add {need} (with bits=16 on the same settings and seeds)", details=parts)
    verdict = SUPPORTED if all(s == "holds" for s in statuses) else INCONCLUSIVE
    return _claim("C1", verdict, text, n, details=parts)


def _part_text(x: dict) -> str:
    if x["status"] == NOT_TESTABLE:
        return f"{x['part']}: not testable (n={x['n']})"
    if "ci90" in x:
        return f"{x['part']}: mean {x['mean']:+.4f}, 90% CI [{x['ci90'][0]:+.4f}, {x['ci90'][1]:+.4f}], n={x['n']} ({x['status']})"
    return f"{x['part']}: mean d {x['mean']:+.4f}, t = {x['t']:.3g}, Holm p = {x['p_holm']:.3g}, n={x['n']} ({x['status']})"


# ------------------------------------------------------------------------------ C2

C2_BITS = (16, 8, 6)


def _significantly_worse(comps: pd.DataFrame, cell: str, level: Any) -> bool:
    hit = comps[(comps[CELL_ID] == cell) & (comps["warmdown"] == level)] if len(comps) else comps
    return bool(len(hit) and hit["significant"].iloc[0])


def optimum_stays(wd) -> dict:
    if wd is None:
        return _claim("C2", NOT_TESTABLE, "-", {}, reason="the runs have no warmdown axis", to_test="sweep warmdown")
    cells, comps = wd.cells, wd.comparisons
    best = cells[cells["optimal"]].set_index(CELL_ID) if len(cells) else cells
    rows, reasons = [], set()
    for g in wd.interaction:
        members = [c for c in g["cells"] if int(best.loc[c, "bits"]) in C2_BITS]
        bits = {c: int(best.loc[c, "bits"]) for c in members}
        if len(set(bits.values())) < 2:
            reasons.add("fewer than two of FP16/INT8/INT6 in a group")
            continue
        seeds = min(int(best.loc[c, "n"]) for c in members)
        if seeds < MIN_REPLICATES:
            reasons.add("one seed per cell")
            continue
        optimum = {c: best.loc[c, "warmdown"] for c in members}
        significant = [f"INT{bits[c]}" if bits[c] != FP_BITS else "FP16" for c in members
                       for other in set(optimum.values()) - {optimum[c]} if _significantly_worse(comps, c, other)]
        rows.append({"group": g["group"], "optimum_by_bits": {bits[c]: optimum[c] for c in members},
                     "moves": len(set(optimum.values())) > 1, "significant_move_at": significant, "min_seeds": seeds,
                     "f_p": g["f_test"]["p"]})
    used = cells[cells["bits"].isin(C2_BITS)] if len(cells) else cells
    n = {"groups": len(rows), "cells": int(used[CELL_ID].nunique()) if len(used) else 0,
         "seeds_min": min((r["min_seeds"] for r in rows), default=0), "sizes": _sizes(used)}
    if not rows:
        if not wd.interaction:
            reasons.add("no group of cells with two bit-widths and two warmdowns")
        to_test = []
        if any("bit" in r or "group" in r for r in reasons):
            to_test.append("FP16 and INT8 or INT6 runs on the same settings, over 2+ warmdowns")
        if "one seed per cell" in reasons:
            to_test.append("2+ seeds per cell (a move must be tested, not read off one run)")
        return _claim("C2", NOT_TESTABLE, "-", n, reason="; ".join(sorted(reasons)), to_test="; ".join(to_test))
    moved = [r for r in rows if r["moves"]]
    sig = [r for r in rows if r["significant_move_at"]]
    text = (f"optimum identical across bits in {len(rows) - len(moved)}/{len(rows)} groups; "
            f"Holm-significant move in {len(sig)}")
    if sig:
        return _claim("C2", CONTRADICTED, text, n, details=rows)
    return _claim("C2", SUPPORTED if not moved else INCONCLUSIVE, text, n,
                  reason="" if not moved else "the optimum moves in some group, but not significantly", details=rows)


# ------------------------------------------------------------------------------ C3

def grid_ratio_one(table: pd.DataFrame) -> dict:
    q6 = table[table["used"] & (table["bits"] == 6)]
    r = q6["grid_ratio_pre_warmdown"].dropna() if "grid_ratio_pre_warmdown" in q6 else pd.Series([], dtype=float)
    n = {"ratios": len(r), "sizes": _sizes(q6.loc[r.index]), "seeds": _seeds(q6.loc[r.index])}
    if q6.empty:
        return _claim("C3", NOT_TESTABLE, "-", n, reason="no usable INT6 run", to_test="add bits=6 and bits=16 runs")
    if len(r) < MIN_REPLICATES:
        why = ("INT6 runs have no FP16 partner measured on the same grid with the same quantiser settings, or no "
               "pre-warmdown snapshot") if not len(r) else "one ratio: no spread to test against"
        return _claim("C3", NOT_TESTABLE, "-", n, reason=why,
                      to_test="bits=16 runs with quant.probe_bits=6 on the same settings, a schedule with a warmdown, "
                              "2+ seeds")
    status, (lo, hi) = equivalence(r.to_numpy(), 1.0, RATIO_MARGIN)
    text = f"mean ratio {r.mean():.3f}, 90% CI [{lo:.3f}, {hi:.3f}] against 1 ± {RATIO_MARGIN:g}"
    verdict = {"holds": SUPPORTED, "fails": CONTRADICTED}.get(status, INCONCLUSIVE)
    return _claim("C3", verdict, text, n, details={"mean": float(r.mean()), "ci90": [lo, hi]})


# ------------------------------------------------------------------------------ C4

def law_predicts(laws: list[dict], holdout: set[float]) -> dict:
    int6 = [fam for fam in laws if int(fam["axes"].get("bits", 0)) == 6]
    if not int6:
        return _claim("C4", NOT_TESTABLE, "-", {}, reason="no INT6 penalties (no INT6 run with an FP16 partner)",
                      to_test="add bits=6 and bits=16 runs over 4+ sizes")
    sizes = sorted({s for fam in int6 for s in fam["sizes"]})
    if not holdout:
        return _claim("C4", NOT_TESTABLE, "-", {"sizes": len(sizes)}, reason="no size was held out",
                      to_test="rerun with --holdout-sizes (e.g. the largest size), keeping 3+ sizes to fit")
    lins = [law for fam in int6 for law in fam["laws"] if law["kind"] == "log-linear" and law.get("holdout")]
    fit_sizes = sorted({s for fam in int6 for s in fam["sizes"] if s not in holdout})
    if not lins:
        return _claim("C4", NOT_TESTABLE, "-", {"sizes": len(sizes), "fit_sizes": len(fit_sizes)},
                      reason=f"{len(fit_sizes)} size(s) left to fit on, or no INT6 penalty at a held-out size",
                      to_test="3+ fitted sizes besides the held-out ones, with INT6 runs at the held-out sizes")
    points = [h for law in lins for h in law["holdout"]]
    inside = sum(h["inside"] for h in points)
    misses = len(points) - inside
    p_excess = float(stats.binomtest(misses, len(points), 1 - PI_LEVEL, alternative="greater").pvalue)
    half = float(np.mean([law["pi_half_width_mean"] for law in lins]))
    n = {"held_out_points": len(points), "families": len(lins), "fit_sizes": len(fit_sizes),
         "dof": min(law["dof"] for law in lins)}
    text = (f"{inside}/{len(points)} held-out points inside their 95% PI (mean half-width ±{half:.3g} nats, "
            f"t with {n['dof']} dof); misses vs 5%: binomial p = {p_excess:.3g}")
    if misses == 0:
        return _claim("C4", SUPPORTED, text, n)
    if p_excess < ALPHA:
        return _claim("C4", CONTRADICTED, text, n)
    return _claim("C4", INCONCLUSIVE, text, n, reason="some held-out points miss, no more than chance allows")


# ------------------------------------------------------------------------------ C5

def _int4_class(comps: pd.DataFrame) -> str:
    if comps.empty:
        return ""
    if (comps["n"] < MIN_REPLICATES).any():
        return "untestable"
    decisive = comps["significant"].all() and (comps["wins"] == comps["n"]).all()
    return "decisive" if decisive else "none" if not comps["significant"].any() else "partial"


def int4_threshold(wd) -> dict:
    if wd is None or wd.cells.empty:
        return _claim("C5", NOT_TESTABLE, "-", {}, reason="no warmdown cells", to_test="sweep warmdown at bits=4")
    c4 = wd.cells[wd.cells["bits"] == 4]
    if c4.empty:
        return _claim("C5", NOT_TESTABLE, "-", {}, reason="no usable INT4 run", to_test="add bits=4 runs")
    comps = wd.comparisons
    by_size: dict[float, set[str]] = {}
    for cell, g in c4.groupby(CELL_ID, sort=False):
        cls = _int4_class(comps[comps[CELL_ID] == cell] if len(comps) else comps)
        if cls:
            by_size.setdefault(float(g["size"].iloc[0]), set()).add(cls)
    classes = {s: (next(iter(c)) if len(c) == 1 else "partial") for s, c in sorted(by_size.items())}
    testable = {s: c for s, c in classes.items() if c != "untestable"}
    n = {"sizes": len(testable), "cells": int(c4[CELL_ID].nunique()), "seeds_min": int(c4["n"].min())}
    text = ", ".join(f"{size_text(s)}: {c}" for s, c in classes.items()) or "-"
    details = {size_text(s): c for s, c in classes.items()}
    if len(testable) < 2:
        missing = []
        if not by_size:
            missing.append("2+ warmdowns at bits=4")
        if any(c == "untestable" for c in classes.values()):
            missing.append("2+ seeds per INT4 cell")
        if len({s for s in by_size}) < 2:
            missing.append("2+ INT4 sizes")
        return _claim("C5", NOT_TESTABLE, text, n, reason=f"{len(testable)} INT4 size(s) with a testable preference",
                      to_test="add " + ", ".join(missing), details=details)
    order = list(testable.values())
    first_decisive = next((i for i, c in enumerate(order) if c == "decisive"), None)
    if first_decisive is not None and "none" in order[first_decisive:]:
        return _claim("C5", CONTRADICTED, text, n, reason="a decisive preference below a size with none",
                      details=details)
    if first_decisive not in (None, 0) and all(c == "none" for c in order[:first_decisive]) and all(
            c == "decisive" for c in order[first_decisive:]):
        return _claim("C5", SUPPORTED, text, n, details=details)
    if set(order) == {"none"}:
        return _claim("C5", NOT_TESTABLE, text, n, reason="no size shows a decisive preference",
                      to_test="larger INT4 sizes (the threshold, if any, lies above the largest), or more seeds",
                      details=details)
    if set(order) == {"decisive"}:
        return _claim("C5", NOT_TESTABLE, text, n, reason="every size shows a decisive preference",
                      to_test="smaller INT4 sizes (the threshold, if any, lies below the smallest)", details=details)
    return _claim("C5", INCONCLUSIVE, text, n, reason="some sizes show a partial preference", details=details)


def score(table: pd.DataFrame, wd, laws: list[dict], holdout: set[float]) -> list[dict]:
    """Every claim of METHOD section 1, scored (see the module docstring for the rules)."""
    if not table["used"].any():
        return [_claim(cid, NOT_TESTABLE, "-", {}, reason="no usable run", to_test="completed runs") for cid in CLAIMS]
    return [penalty_order(table), optimum_stays(wd), grid_ratio_one(table), law_predicts(laws, holdout),
            int4_threshold(wd)]


def fmt_n(n: dict[str, Any]) -> str:
    """'n: 40 pairs, 5 sizes, 4 seeds' from a claim's n."""
    names = {"seeds_min": "seeds (min per cell)", "held_out_points": "held-out points", "fit_sizes": "fitted sizes"}
    return ", ".join(f"{v} {names.get(k, k)}" for k, v in n.items() if v is not None and not (
        isinstance(v, float) and math.isnan(v))) or "-"
