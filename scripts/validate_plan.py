"""Check the planner against a study that ran the full warmdown grid (docs/prediction.md).

    qatlab -m experiment=cpu_schedule_study hydra.sweep.dir=multirun_outputs/schedule_study
    python scripts/validate_plan.py multirun_outputs/schedule_study [--pilots 0 0.5] [--out table.md]

The planner sees only the pilot runs (the warmdowns given, every seed: experiment=cpu_pilot's
design) and predicts the final val loss of every grid warmdown; this script sets those predictions
beside what every run of the study observed: per run, per law (Tissue's, the Multi-Power Law, and
the one the planner used), the mean absolute error over the held-out runs, and per cell the
predicted optimum against the empirical one (the grid warmdown with the lowest seed-mean val loss).
Prints Markdown; --out writes it too.
"""

from __future__ import annotations

import argparse
import statistics
import time

from qat_lab.analysis import load, plan
from qat_lab.analysis.load import RunSet
from qat_lab.atomic import atomic_write


def pilots_only(runset: RunSet, warmdowns: set[float]) -> RunSet:
    keep = [r for r in runset.runs if float(r.record["axes"]["warmdown"]) in warmdowns]
    return RunSet(runs=keep, inputs=runset.inputs)


def bits_of_cell(runset: RunSet, cell_plan: plan.CellPlan) -> dict[str, dict]:
    """The study's runs of one planned cell (same fixed overrides), by run id."""
    fixed = set(cell_plan.fixed)
    return {r.run_id: r.record for r in runset.runs
            if {o for o in plan.job_overrides(r.record) if plan.override_key(o) not in plan.SWEPT} == fixed}


def pct(x: float) -> str:
    return f"{100 * x:+.2f}%"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the sweep dir of a study with the full warmdown grid")
    ap.add_argument("--pilots", nargs="+", type=float, default=[0.0, 0.5], help="the pilot warmdowns")
    ap.add_argument("--resamples", type=int, default=plan.DEFAULT_RESAMPLES)
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args()

    study = load.load_local([args.study])
    t = time.perf_counter()
    plans, notes = plan.plan(pilots_only(study, set(args.pilots)), resamples=args.resamples)
    plan_s = time.perf_counter() - t
    laws = ("tissue", "mpl")
    lines = [f"Planner on the pilots (warmdown {', '.join(f'{w:g}' for w in args.pilots)}): {plan_s:.0f} s.", "",
             "| cell | warmdown | seed | observed | Tissue | MPL | used | error (used) |", "|---|---|---|---|---|---|---|---|"]
    errors: dict[str, list[float]] = {k: [] for k in (*laws, "used")}
    optima_rows = []
    for p in plans:
        records = bits_of_cell(study, p)
        seed_means: dict[float, list[float]] = {}
        for rec in sorted(records.values(), key=lambda r: (float(r["axes"]["warmdown"]), str(r["axes"]["seed"]))):
            wd, obs = float(rec["axes"]["warmdown"]), rec.get("results", {}).get("val_loss")
            if obs is None or wd not in p.grid:
                continue
            seed_means.setdefault(wd, []).append(obs)
            i = p.grid.index(wd)
            pred = {k: float(v[i]) for k, v in p.law_final.items()}
            used = float(p.point_final[i])
            held_out = wd not in args.pilots
            if held_out:
                for k in laws:
                    if k in pred:
                        errors[k].append(abs(pred[k] - obs) / obs)
                errors["used"].append(abs(used - obs) / obs)
            lines.append(f"| {p.cell} | {wd:g}{'' if held_out else ' (pilot)'} | {rec['axes']['seed']} | {obs:.4f} | "
                         + " | ".join(f"{pred[k]:.4f}" if k in pred else "-" for k in laws)
                         + f" | {p.law.law_used} | {pct((used - obs) / obs)} |")
        empirical = min(seed_means, key=lambda w: statistics.mean(seed_means[w]))
        lo, hi = p.interval
        steps = abs(plan.snap(p.optimum, p.grid) - plan.snap(empirical, p.grid))
        optima_rows.append(f"| {p.cell} | {empirical:g} | {p.optimum:g} [{lo:.2f}, {hi:.2f}] | "
                           f"{'decisive' if p.decisive else 'undecided'} | {'yes' if steps <= 1 else f'no ({steps} steps)'} |")
    lines += ["", "Mean absolute error of the held-out runs' final val loss: "
              + ", ".join(f"{name} {100 * statistics.mean(v):.2f}% (n={len(v)})"
                          for name, v in (("Tissue", errors["tissue"]), ("Multi-Power", errors["mpl"]),
                                          ("the law used per cell", errors["used"])) if v) + ".", "",
              "| cell | empirical optimum | predicted optimum [90% interval] | plan | within one grid step? |",
              "|---|---|---|---|---|", *optima_rows]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        atomic_write(args.out, text)


if __name__ == "__main__":
    main()
