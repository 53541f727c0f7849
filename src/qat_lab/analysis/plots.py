"""The figures of the report (matplotlib, Agg backend: files only, no display needed).

One colour per bit-width everywhere (FP16 black, INT8 blue, INT6 green, INT4 red, ...), so a
reader can follow a bit-width from figure to figure; warmdowns are told apart by a sequential
colour map where bits are fixed. Every figure is capped in panels, and the number of figures
per kind is capped by --max-plots; the report says when something was left out of the pictures
(all numbers are still in the tables and fits.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from qat_lab.analysis import annealing_law, cell_fit, penalty_law  # noqa: E402
from qat_lab.analysis.cells import CELL_ID, fmt_value, label, ordered_levels, readable_order  # noqa: E402
from qat_lab.analysis.design import bit_groups  # noqa: E402
from qat_lab.atomic import atomic_output  # noqa: E402
from qat_lab.quant import FP_BITS  # noqa: E402
from qat_lab.records.identity import ANY  # noqa: E402
from qat_lab.validation import is_number  # noqa: E402

BITS_COLOURS = {16: "black", 8: "tab:blue", 7: "tab:cyan", 6: "tab:green", 5: "tab:olive", 4: "tab:red",
                3: "tab:purple", 2: "tab:brown"}
MAX_PANELS = 6
DPI = 100

plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 8,
                     "axes.grid": True, "grid.alpha": 0.3})


def warmdown_colour(i: int, n: int):
    """Sequential colours for warmdowns (plasma up to orange: its yellow end is unreadable on white)."""
    return plt.get_cmap("plasma")(0.8 * i / max(n - 1, 1))


def bits_colour(bits) -> str:
    return BITS_COLOURS.get(int(bits), "tab:gray")


def bits_name(bits) -> str:
    return "FP16" if int(bits) == FP_BITS else f"INT{int(bits)}"


def _panels(n: int, ncols: int = 3, width: float = 4.6, height: float = 3.4, top: float = 0.75):
    """A grid of n panels with fixed margins in inches.

    Fixed margins instead of tight_layout: the layout engines draw every text twice to measure
    it, which doubles the cost of a figure, and a report can hold a dozen of them.
    """
    ncols = min(n, ncols)
    nrows = math.ceil(n / ncols)
    left, right, bottom, gap_w, gap_h = 0.85, 0.2, 0.6, 0.95, 1.15
    fig_w = left + right + ncols * width + (ncols - 1) * gap_w
    fig_h = top + bottom + nrows * height + (nrows - 1) * gap_h
    fig, axs = plt.subplots(nrows, ncols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, bottom=bottom / fig_h, top=1 - top / fig_h,
                        wspace=gap_w / width, hspace=gap_h / height)
    for ax in axs.flat[n:]:
        ax.set_visible(False)
    return fig, list(axs.flat[:n])


def _save(fig, path: Path) -> Path:
    try:
        with atomic_output(path) as tmp:
            # The temp name ends in .tmp: matplotlib must be told the format, not guess it from the name.
            fig.savefig(tmp, dpi=DPI, format="png")
    finally:
        plt.close(fig)
    return path


@dataclass
class Drawn:
    """The figures of one kind, and how many panels (or cells) they show out of how many."""
    paths: list[Path]
    shown: int
    total: int

    def note(self, what: str) -> str:
        """'' when everything is drawn, else a sentence for the report."""
        if self.shown >= self.total:
            return ""
        return f"(The figure shows {self.shown} of {self.total} {what}; --max-plots draws more; the tables hold all.)"


def _drawn(paths: list[Path], chunks: list[list], total: int) -> Drawn:
    return Drawn(paths, sum(len(c) for c in chunks), total)


def _chunks(items: list, size: int, max_figures: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)][:max_figures]


def _group_label(values: dict, shown: list[str]) -> str:
    text = label(values, shown)
    return "" if text == "all" else text


def _numeric(levels: list) -> bool:
    return all(is_number(v, finite=False) for v in levels)


def loss_vs_level(cells: pd.DataFrame, key: str, groups: list[tuple[dict, list[str]]], group_shown: list[str],
                  out: Path, max_figures: int) -> Drawn:
    """Seed-mean final val loss against the compared key, one line per bit-width, error bars =
    seed sd; one panel per group of cells differing only in bits (design.bit_groups). A numeric
    key is a numeric axis; any other is categorical. A bit-width whose cell has the key as ANY
    (FP16 when the key is a quantiser setting) is a dashed level line: the key cannot change it."""
    paths, chunks = [], _chunks(groups, MAX_PANELS, max_figures)
    for fi, chunk in enumerate(chunks):
        fig, axs = _panels(len(chunk))
        for ax, (values, members) in zip(axs, chunk):
            g = cells[cells[CELL_ID].isin(members)]
            shown = [v for v in ordered_levels(g[key]) if v is not ANY]
            numeric = _numeric(shown)
            where = {v: (float(v) if numeric else i) for i, v in enumerate(shown)}
            for bits, gb in g.groupby("bits", sort=True):
                wild = gb[gb[key].map(lambda v: v is ANY)]
                if len(wild):
                    ax.axhline(wild["val_loss_mean"].iloc[0], color=bits_colour(bits), ls="--", lw=1,
                               label=f"{bits_name(bits)} ({key} does not apply)")
                gb = gb[gb[key].map(lambda v: v is not ANY)]
                if gb.empty:
                    continue
                gb = gb.assign(_x=gb[key].map(where)).sort_values("_x")
                ax.errorbar(gb["_x"], gb["val_loss_mean"], yerr=gb["val_loss_sd"].fillna(0), marker="o",
                            ms=4, capsize=3, color=bits_colour(bits), label=bits_name(bits))
                best = gb[gb["optimal"]]
                ax.plot(best["_x"], best["val_loss_mean"], marker="*", ms=15, color=bits_colour(bits),
                        mec="black", mew=0.6, ls="none")
            if not numeric:
                ax.set_xticks(list(where.values()), [fmt_value(v) for v in where], rotation=20, fontsize=8)
            ax.set_xlabel("warmdown fraction" if key == "warmdown" else key)
            ax.set_ylabel("final val loss (nats/token)")
            ax.set_title(_group_label(values, group_shown) or f"final loss vs {key}")
            ax.legend(title="star = optimum", ncol=2, loc="best")
        paths.append(_save(fig, out / f"loss_vs_{_file_key(key)}{'' if fi == 0 else f'_{fi + 1}'}.png"))
    return _drawn(paths, chunks, len(groups))


def _file_key(key: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in key)


def penalty_vs_size(laws: list[dict], table: pd.DataFrame, shown: list[str], out: Path, max_figures: int) -> Drawn:
    """Penalty against size (log axis) with the log-linear law and its 95% prediction band, per bits."""
    fitted = [law for law in laws if law["laws"]]
    if not fitted:
        return Drawn([], 0, 0)
    panel_axes = [a for a in penalty_law.family_axes(list(fitted[0]["axes"])) if a != "bits"]
    panel_shown = [a for a in panel_axes if a in shown]
    panels: dict[str, list[dict]] = {}
    for law in fitted:
        panels.setdefault(label({a: law["axes"][a] for a in panel_axes}, panel_shown), []).append(law)
    points = table[table["used"] & table["penalty"].notna() & (table["bits"] != FP_BITS)]
    paths, chunks = [], _chunks(list(panels.items()), MAX_PANELS, max_figures)
    for fi, chunk in enumerate(chunks):
        fig, axs = _panels(len(chunk))
        for ax, (title, fams) in zip(axs, chunk):
            for fam in fams:
                lin = next(x for x in fam["laws"] if x["kind"] == "log-linear")
                bits, colour = fam["axes"]["bits"], bits_colour(fam["axes"]["bits"])
                mask = np.ones(len(points), dtype=bool)
                for a, v in fam["axes"].items():
                    mask &= (points[a] == v).to_numpy() | (pd.isna(v) and points[a].isna().to_numpy())
                seeds = points[mask]
                ax.scatter(seeds["size"], seeds["penalty"], s=10, color=colour, alpha=0.35, lw=0)
                fit = penalty_law.refit(lin)
                sizes = np.array(fam["sizes"], dtype=float)
                grid = np.geomspace(sizes.min() / 1.5, sizes.max() * 1.5, 100)
                yhat, lo, hi = fit.predict(np.log(grid))
                ax.plot(grid, yhat, color=colour, lw=1.5,
                        label=f"{bits_name(bits)}: P = {fit.a:.3g} {'+' if fit.b >= 0 else '−'} {abs(fit.b):.3g} ln N"
                              f" (R² {fit.r2:.2f})")
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.12)
                fp = lin["fit_points"]
                ax.plot([p["size"] for p in fp], [p["penalty"] for p in fp], "o", color=colour, ms=5)
                for h in lin.get("holdout", []):
                    ax.plot(h["size"], h["penalty"], "o", mfc="white", mec=colour, ms=7, mew=1.5)
            ax.set_xscale("log")
            ax.minorticks_off()  # decade ticks are enough, and a log axis' minor ticks are costly to draw
            ax.axhline(0, color="gray", lw=0.8)
            ax.set_xlabel("non-embedding parameters N")
            ax.set_ylabel("penalty L(bits) - L(16) (nats/token)")
            ax.set_title(f"{title}\nfilled: fitted ({fams[0]['points_mode']}), hollow: held out; band: 95% PI"
                         if title != "all" else "filled: fitted, hollow: held out; band: 95% PI")
            ax.legend(loc="upper right")
        paths.append(_save(fig, out / f"penalty_law{'' if fi == 0 else f'_{fi + 1}'}.png"))
    return _drawn(paths, chunks, len(panels))


def lr_curves(traces: list[tuple[str, annealing_law.Trace]], lam: float, out: Path) -> Path | None:
    """The LR multiplier of each distinct schedule and the two areas the annealing law uses."""
    if not traces:
        return None
    fig, axs = _panels(3, width=4.2, height=3.2, top=0.6)
    for i, (name, tr) in enumerate(traces):
        colour = warmdown_colour(i, len(traces))
        s1, s2 = annealing_law.areas(tr.eta, lam)
        axs[0].plot(np.arange(len(tr.eta)), tr.eta, color=colour, label=name)
        axs[1].plot(np.arange(len(s1)), s1, color=colour)
        axs[2].plot(np.arange(len(s2)), s2, color=colour)
    axs[0].set_ylabel("LR multiplier η (schedule × lr_mult)")
    axs[1].set_ylabel("S1: forward area Σ η")
    axs[2].set_ylabel(f"S2: annealing area (λ = {lam:g})")
    for ax in axs:
        ax.set_xlabel("optimiser step")
    axs[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("LR schedules of the runs (warmup counted at peak, as the annealing law does)")
    return _save(fig, out / "lr_curves.png")


def grid_distance_over_training(table: pd.DataFrame, history, group_axes: list[str], group_shown: list[str],
                                out: Path, max_figures: int) -> Drawn:
    """Weight-to-grid distance against step, seed mean per bit-width, one panel per group x
    warmdown (groups of runs differing only in bits, seed and warmdown; an FP16 run joins every
    group it matches through its ANY keys)."""
    used = readable_order(table[table["used"]], group_axes)
    groups = bit_groups(used, group_axes, cell_col="run_id")
    panels = [(values, wd, gw) for values, members in groups
              for wd, gw in used[used["run_id"].isin(members)].groupby("warmdown", sort=True)]
    paths, chunks = [], _chunks(panels, MAX_PANELS, max_figures)
    for fi, chunk in enumerate(chunks):
        fig, axs = _panels(len(chunk))
        drew = False
        for ax, (values, wd, g) in zip(axs, chunk):
            for bits, gb in g.groupby("bits", sort=True):
                series = []
                for run_id in gb["run_id"]:
                    h = history(run_id)
                    if h is not None and "grid_distance" in h:
                        # Step 0 is the initialisation (zero-initialised projections sit on the
                        # grid): far below the rest, it would flatten the differences that matter.
                        d = h[h["grid_distance"].notna() & (h["step"] > 0)]
                        series.append(pd.Series(d["grid_distance"].to_numpy(float), index=d["step"].to_numpy(float)))
                if not series:
                    continue
                mean = pd.concat(series, axis=1).mean(axis=1).sort_index()
                grid_bits = gb["grid_bits"].dropna()
                on = f" (on INT{int(grid_bits.iloc[0])} grid)" if len(grid_bits) else ""
                ax.plot(mean.index, mean.to_numpy(), marker=".", color=bits_colour(bits), label=bits_name(bits) + on)
                drew = True
            steps = int(g["steps"].iloc[0])
            ax.axvline(steps - round(wd * steps), color="gray", ls="--", lw=0.8)
            ax.axhline(0.25, color="gray", ls=":", lw=0.8)
            ax.set_title(f"{_group_label(values, group_shown)} warmdown={fmt_value(wd)}".strip())
            ax.set_xlabel("step (dashed: warmdown starts; init not shown)")
            ax.set_ylabel("mean |u - round(u)| (0.25 = uniform)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="lower right")
        if drew:
            paths.append(_save(fig, out / f"grid_distance{'' if fi == 0 else f'_{fi + 1}'}.png"))
        else:
            plt.close(fig)
    return _drawn(paths, chunks, len(panels))


ANNEAL_CELLS_PER_FIGURE = 3


def annealing_fits(cell_laws: list[cell_fit.CellLaw], out: Path, max_figures: int) -> Drawn:
    """Per cell (one row each, up to 3 per figure): observed vs fitted / predicted loss curves, and
    the law's final loss against warmdown fraction for every lambda."""
    fitted = [cl for cl in cell_laws if cl.best is not None]
    paths, chunks = [], _chunks(fitted, ANNEAL_CELLS_PER_FIGURE, max_figures)
    for fi, chunk in enumerate(chunks):
        fig, axs = _panels(2 * len(chunk), ncols=2, width=5.6, height=3.8, top=0.8)
        for row, cl in enumerate(chunk):
            _annealing_row(cl, axs[2 * row], axs[2 * row + 1])
        paths.append(_save(fig, out / f"annealing_fit{'' if fi == 0 else f'_{fi + 1}'}.png"))
    return _drawn(paths, chunks, len(fitted))


def _annealing_row(cl: cell_fit.CellLaw, ax, ax2) -> None:
    best = cl.best
    wds = sorted(c.warmdown for c in cl.curves)
    lo, hi = math.inf, -math.inf
    for c in sorted(cl.curves, key=lambda c: c.warmdown):
        colour = warmdown_colour(wds.index(c.warmdown), len(wds))
        k, s1, s2, y = c.points(best.lam)
        fitted = c.warmdown in cl.fit_warmdowns
        ax.plot(k, y, color=colour, alpha=0.35, lw=0.8)
        ax.plot(k, annealing_law.law(best.params, s1, s2), color=colour, lw=2, ls="-" if fitted else "--",
                label=f"wd {fmt_value(c.warmdown)} ({'fit' if fitted else 'predicted'}, "
                      f"{c.n_seeds} seed{'s' * (c.n_seeds > 1)})")
        # Zoom past the first steep drop: the schedules differ in the last part of the curve.
        lo, hi = min(lo, float(np.quantile(y, 0.01))), max(hi, float(np.quantile(y, 0.9)))
    ax.set_ylim(lo - 0.05 * (hi - lo), hi)
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("train loss (nats/token)")
    p = best.params
    ax.set_title(f"{cl.cell}: L0={p['L0']:.3f} A={p['A']:.3g} α={p['alpha']:.3f} C={p['C']:.3g} λ={best.lam:g}\n"
                 "thin: observed (seed mean), solid: fitted, dashed: predicted from the LR trace")
    ax.legend(loc="upper right")
    if not cl.candidate_final:
        ax2.set_visible(False)
        return
    for lam, final in cl.candidate_final.items():
        is_best = lam == best.lam
        ax2.plot(cl.candidates, final, color="black" if is_best else "gray", lw=2 if is_best else 0.8,
                 alpha=1 if is_best else 0.6, label=f"λ={lam:g}" + (" (chosen)" if is_best else ""))
    row = cl.chosen
    ax2.axvline(row["predicted_optimum"], color="tab:blue", ls="--",
                label=f"predicted optimum {row['predicted_optimum']:g}" + (" (undetermined)" if cl.undetermined else ""))
    if cl.empirical_optimum is not None:
        ax2.axvline(cl.empirical_optimum, color="tab:red", ls=":", lw=2,
                    label=f"empirical optimum {fmt_value(cl.empirical_optimum)}")
    ax2.set_xlabel("warmdown fraction")
    ax2.set_ylabel("predicted final train loss")
    ax2.set_title(f"{cl.cell}: the law's final loss for every warmdown")
    ax2.legend(loc="upper left")
