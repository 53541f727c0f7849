"""When to quantise: QAT from init, late QAT and post-training quantisers side by side (METHOD section 9).

A QAT-start study (experiment=cpu_qat_start) sweeps `qat_start` beside bits and warmdown. Its
`never` arm trains without fake quantisation (quant.start=1), so one run of it gives four arms
at once, all from the same trained weights of that seed:

- FP16: its latent (unquantised) final loss;
- PTQ round-to-nearest: its final loss after the round trip at the cell's bits (= ptq{bits});
- PTQ clip search and PTQ GPTQ: ptq_clip{bits} / ptq_gptq{bits} of the same weights.

Beside them: QAT from initialisation (qat_start=init) and the best late-QAT arm of the cell (the
start with the lowest seed mean among the others: 0.5, 0.67, lr<0.15, ...). Every arm is one value
per seed, so arms are compared seed by seed (stats.paired): the best QAT arm against GPTQ, and
the best late start against from-init QAT.

A cell here is every varying key except qat_start (and what goes with it) and the seed: the same
cells as `--compare qat_start`, whatever the default compared key of the report is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qat_lab.analysis import stats
from qat_lab.analysis.cells import fmt_value
from qat_lab.analysis.design import goes_with, levels
from qat_lab.analysis.markdown import md_table, mean_sd, pval, sig
from qat_lab.analysis.plots import bits_name
from qat_lab.records.identity import ANY, FP_BITS

KEY = "qat_start"
FROM_INIT = "init"
NO_QAT = "never"
ARMS = ("FP16", "QAT from init", "best late QAT", "PTQ RTN", "PTQ clip", "PTQ GPTQ")
"""The columns of the per-cell table, in the order METHOD section 9 lists them."""


@dataclass
class CellArms:
    cell: dict
    """The cell's key values (bits, warmdown, ...)."""
    best_late: str | None
    """The late start with the lowest seed mean (None: the cell has no late-QAT arm)."""
    arms: dict[str, pd.Series]
    """Per arm: final val loss by seed."""
    qat_vs_gptq: stats.Paired | None
    """d = L(best QAT arm) - L(GPTQ) per seed (positive: GPTQ won)."""
    best_qat: str | None
    """Which QAT arm that is: 'QAT from init' or 'best late QAT'."""
    late_vs_init: stats.Paired | None
    """d = L(QAT from init) - L(best late QAT) per seed (positive: starting late won)."""


def applies(table: pd.DataFrame) -> bool:
    """A QAT-start study: the axis is there, and it has the `never` arm or two levels."""
    if KEY not in table:
        return False
    used = table[table["used"]]
    values = {str(v) for v in levels(used[KEY])}
    return NO_QAT in values and len(values) > 1


def _paired(a: pd.Series, b: pd.Series) -> stats.Paired | None:
    both = pd.concat([a, b], axis=1, join="inner").dropna()
    return stats.paired(both.iloc[:, 0].to_numpy() - both.iloc[:, 1].to_numpy()) if len(both) else None


def cell_arms(table: pd.DataFrame, varying: list[str]) -> list[CellArms]:
    """The arms of every quantised cell of a QAT-start study (applies() must hold)."""
    runs = table[table["used"] & (table["bits"] != FP_BITS) & table[KEY].map(lambda v: v is not ANY)].copy()
    runs[KEY] = runs[KEY].map(str)
    keys = [k for k in varying if k not in (KEY, "seed") and not goes_with(k, KEY) and k in runs]
    if "bits" not in keys:
        keys.insert(0, "bits")
    out = []
    for values, g in runs.groupby(keys, sort=True, dropna=False):
        cell = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        bits = int(cell["bits"])

        def by_seed(level: str, column: str) -> pd.Series:
            rows = g[g[KEY] == level]
            return (rows.set_index("seed")[column] if column in rows else pd.Series(dtype=float)).dropna()

        late_means = {lv: by_seed(lv, "val_loss").mean() for lv in sorted(set(g[KEY])) if lv not in (FROM_INIT, NO_QAT)}
        late_means = {lv: m for lv, m in late_means.items() if np.isfinite(m)}
        best_late = min(late_means, key=late_means.get) if late_means else None
        arms = {
            "FP16": by_seed(NO_QAT, "latent_val_loss"),
            "QAT from init": by_seed(FROM_INIT, "val_loss"),
            "best late QAT": by_seed(best_late, "val_loss") if best_late else pd.Series(dtype=float),
            "PTQ RTN": by_seed(NO_QAT, "val_loss"),
            "PTQ clip": by_seed(NO_QAT, f"ptq_clip{bits}_val_loss"),
            "PTQ GPTQ": by_seed(NO_QAT, f"ptq_gptq{bits}_val_loss"),
        }
        qat = {name: arms[name] for name in ("QAT from init", "best late QAT") if len(arms[name])}
        best_qat = min(qat, key=lambda n: qat[n].mean()) if qat else None
        out.append(CellArms(
            cell=cell, best_late=best_late, arms=arms, best_qat=best_qat,
            qat_vs_gptq=_paired(qat[best_qat], arms["PTQ GPTQ"]) if best_qat and len(arms["PTQ GPTQ"]) else None,
            late_vs_init=(_paired(arms["QAT from init"], arms["best late QAT"])
                          if len(arms["QAT from init"]) and len(arms["best late QAT"]) else None)))
    return out


def arms_frame(cells: list[CellArms]) -> pd.DataFrame:
    """One row per cell and arm: mean, sd and n over seeds (the CSV beside the report)."""
    rows = []
    for c in cells:
        for arm in ARMS:
            s = c.arms[arm]
            rows.append({**c.cell, "arm": arm, "level": c.best_late if arm == "best late QAT" else None,
                         "mean": s.mean() if len(s) else np.nan, "sd": s.std(ddof=1) if len(s) > 1 else np.nan,
                         "n": len(s)})
    return pd.DataFrame(rows)


def _label(cell: dict) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in cell.items())


def _versus(p: stats.Paired | None, first: str, second: str) -> str:
    if p is None:
        return "-"
    if p.n < 2:
        return f"{p.mean:+.4f} (1 seed: no test)"
    return f"{p.mean:+.4f}, {first if p.mean < 0 else second} wins {max(p.wins, p.n - p.wins - p.ties)}/{p.n}, p_t {pval(p.p_t)}"


def section(table: pd.DataFrame, varying: list[str], warmdown_interaction: list[dict], number: int) -> list[str]:
    """The report's section on QAT start and PTQ arms; [] when the runs are no QAT-start study."""
    if not applies(table):
        return []
    cells = cell_arms(table, varying)
    out = [f"## {number}. When to quantise: QAT start against post-training quantisation", "",
           "Final val loss per arm, seed mean ± sd (n), nats/token (METHOD section 9). FP16, PTQ RTN, PTQ clip and "
           "PTQ GPTQ are one set of runs: qat_start=never (trained without fake quantisation); FP16 is their latent "
           "loss, the PTQ arms quantise their final weights at the cell's bits. Best late QAT: the start with the "
           "lowest seed mean other than init (named in brackets). **Bold**: the cell's lowest quantised arm. The "
           "last two columns compare seed by seed (paired t-test, no multiplicity correction): d = L(best QAT arm) "
           "- L(GPTQ), and d = L(QAT from init) - L(best late QAT). All numbers: arms.csv.", ""]
    rows = []
    for c in cells:
        means = {arm: c.arms[arm].mean() for arm in ARMS[1:] if len(c.arms[arm])}
        best = min(means, key=means.get) if means else None
        row = [_label(c.cell)]
        for arm in ARMS:
            s = c.arms[arm]
            text = mean_sd(s.mean(), s.std(ddof=1) if len(s) > 1 else math.nan, len(s)) if len(s) else "-"
            if arm == "best late QAT" and c.best_late:
                text += f" [{c.best_late}]"
            row.append(f"**{text}**" if arm == best else text)
        row += [_versus(c.qat_vs_gptq, c.best_qat or "QAT", "GPTQ"), _versus(c.late_vs_init, "init", "late")]
        rows.append(row)
    out += [md_table(["cell", *ARMS, "best QAT vs GPTQ", "init vs best late"], rows), ""]
    if warmdown_interaction:
        out += ["Does the optimal warmdown move with bits at each QAT start? (the schedule x bit-width question, "
                "asked again per start: the interaction F-test of section 4, along warmdown)", ""]
        rows = []
        for g in warmdown_interaction:
            f = g["f_test"]
            ftxt = (f"F({f['df_num']}, {f['df_den']}) = {sig(f['F'])}, p = {pval(f['p'])}" if f["df_num"]
                    else f"not testable: {f['note']}")
            opt = ", ".join(f"{bits_name(b)}: {fmt_value(w)}" for b, w in g["optimum_by_bits"].items())
            rows.append([g["group"], opt, "yes" if g["moves"] else "no", ftxt])
        out += [md_table(["group", "optimal warmdown", "moves?", "interaction test"], rows), ""]
    return out
