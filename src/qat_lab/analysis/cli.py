"""Console entry point `qatlab-analyze`.

    qatlab-analyze multirun_outputs/<sweep> [more sweep dirs ...] --out report/
    qatlab-analyze --wandb ENTITY/PROJECT --group <sweep-id> --out report/

Bad input (a path that does not exist, no records, no source at all) is one line
`qatlab-analyze: error: ...` and exit status 2, like `qatlab`.
"""

from __future__ import annotations

import os

# Before numpy loads: the analysis does thousands of tiny linear-algebra calls (L-BFGS-B, OLS),
# for which OpenBLAS worker threads only spin and fight for the cores; on a shared 2-core machine
# they made the annealing fits 15x slower. One thread is the fast setting here.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402

DEFAULT_LAMBDAS = (0.9, 0.95, 0.99, 0.995, 0.999)
"""The annealing law's fallback lambda grid (annealing_law.DEFAULT_LAMBDAS, used when a run length
is unknown; the default grid is scaled to the run length). Repeated so that parsing the command
line does not load numpy before the thread setting above; a test keeps them equal."""

PROG = "qatlab-analyze"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(2)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Tables, paired tests, scaling-law fits and plots from qatlab sweeps "
                                       "(docs/analysis.md).")
    p.add_argument("sweeps", nargs="*", help="sweep dirs (or dirs of sweeps, or job dirs) holding run.json records")
    p.add_argument("--out", default="report", help="output dir for report.md, CSVs, fits.json, PNGs (default: report)")
    p.add_argument("--wandb", metavar="ENTITY/PROJECT", help="pull runs from W&B instead of local records")
    p.add_argument("--group", help="W&B group to pull (the sweep id); required with --wandb")
    p.add_argument("--compare", metavar="KEY",
                   help="the key compared within cells: a sweep axis (warmdown, optim, schedule, lr_mult, qat_start, "
                        "...) or any config key that varies (quant.scale_rule, optim.matrix_lr, ...); "
                        "default: warmdown")
    p.add_argument("--holdout-sizes", nargs="+", default=[], metavar="SIZE",
                   help="sizes left out of the penalty-law fit and predicted: model names or counts (5M, 1.2e7)")
    p.add_argument("--law-points", choices=("means", "seeds"), default="means",
                   help="penalty-law fit points: per-size seed means (default) or seed-level points")
    p.add_argument("--anneal-fit-warmdowns", nargs="+", type=float, metavar="F",
                   help="warmdowns whose loss curves the annealing law is fitted on (default: the smallest and "
                        "largest of each cell; the smallest if it has two)")
    p.add_argument("--anneal-lambdas", nargs="+", type=float, default=None, metavar="L",
                   help="lambda grid of the annealing law (default: scaled to the run length T, "
                        "lambda = 1 - 1/tau with tau = T x 0.01, 0.03, 0.1, 0.3)")
    p.add_argument("--no-anneal", action="store_true", help="skip the annealing-law fits")
    p.add_argument("--plan", action="store_true",
                   help="plan a warmdown sweep from pilot runs (the sweep dirs): predict each cell's optimum with a "
                        "90%% interval and print the reduced qatlab command that checks it; writes plan.json, plan.md "
                        "to --out (docs/prediction.md)")
    p.add_argument("--plan-grid", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.33, 0.5, 0.75], metavar="F",
                   help="the warmdown grid a full sweep would run (default: 0 0.1 0.2 0.33 0.5 0.75)")
    p.add_argument("--plan-resamples", type=int, default=30,
                   help="bootstrap resamples of the pilots' seeds per cell (default 30)")
    p.add_argument("--max-plots", type=int, default=1,
                   help="figures per kind (default 1, each up to 6 panels or 3 annealing cells); "
                        "the tables hold everything")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the annealing fits and figures (default: the available cores, at most 8; "
                        "W&B inputs use 1); the report is the same for any number")
    p.add_argument("--fit-cache", metavar="DIR", default=None,
                   help="where the annealing and Multi-Power fits are kept and reused by later runs of the same "
                        "curves (default: $QAT_LAB_CACHE/fits or ~/.cache/qat_lab/fits); the report is the same "
                        "with or without it")
    p.add_argument("--no-fit-cache", action="store_true", help="fit every cell afresh and keep nothing")
    p.add_argument("--to-wandb", action="store_true", help="also log the report to W&B as an analysis run")
    p.add_argument("--wandb-project", default="qat_lab", help="project of the --to-wandb run (default qat_lab)")
    p.add_argument("--wandb-mode", choices=("offline", "online"), default="offline",
                   help="mode of the --to-wandb run (default offline; `wandb sync` uploads it later)")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    args = p.parse_args(argv)
    if bool(args.sweeps) == bool(args.wandb):
        p.error("give sweep dirs or --wandb ENTITY/PROJECT --group ID (one of the two)")
    if args.wandb and not args.group:
        p.error("--wandb needs --group <sweep-id>")
    if any(not 0 < lam < 1 for lam in args.anneal_lambdas or ()):
        p.error("--anneal-lambdas must lie in (0, 1)")
    if args.max_plots < 0:
        p.error("--max-plots must be >= 0")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")

    from qat_lab.analysis import load, pipeline, report

    if args.plan:
        _plan(p, args)
        return

    try:
        runset = load.load_wandb(args.wandb, args.group) if args.wandb else load.load_local(args.sweeps)
        options = pipeline.Options(compare=args.compare, holdout=args.holdout_sizes, law_points=args.law_points, anneal=not args.no_anneal,
                                   anneal_fit_warmdowns=args.anneal_fit_warmdowns,
                                   anneal_lambdas=tuple(args.anneal_lambdas) if args.anneal_lambdas else None,
                                   max_plots=args.max_plots, workers=args.workers, fit_cache=_fit_cache_dir(args))
        analysis = pipeline.analyse(runset, options)
    except load.AnalysisInputError as e:
        p.error(str(e))
    path = report.write_report(analysis, args.out, [PROG, *argv])
    cov = analysis.coverage
    print(f"{len(analysis.table)} runs ({cov.n_used} used, {len(cov.excluded)} left out, "
          f"{len(cov.missing)} grid points missing, {len(runset.problems)} unreadable) -> {path}")
    _print_cache_use(analysis.fit_cache_use, analysis.options.fit_cache)
    if args.to_wandb:
        from qat_lab.analysis.wandb_export import export

        run_id = export(analysis, path.parent, project=args.wandb_project, mode=args.wandb_mode)
        print(f"W&B analysis run {run_id} ({args.wandb_mode})")


def _fit_cache_dir(args) -> str | None:
    if args.no_fit_cache:
        return None
    if args.fit_cache:
        return args.fit_cache
    from qat_lab.analysis.fit_cache import default_dir

    return str(default_dir())


def _print_cache_use(use: dict, where: str | None) -> None:
    """One line on what the fit cache did (nothing without a cache or fits), one per problem."""
    if not use:
        return
    print(f"annealing fits: {use.get('hits', 0)} reused, {use.get('misses', 0)} fitted (cache {where})")
    for line in use.get("unreadable", []):
        print(f"{PROG}: warning: unusable cached fit (refitted): {line}", file=sys.stderr)
    if use.get("unwritable"):
        print(f"{PROG}: warning: fits not kept: {use['unwritable']}", file=sys.stderr)


def _plan(p: argparse.ArgumentParser, args) -> None:
    """--plan: the pilots -> per-cell predicted optimum, interval, reduced sweep command."""
    from qat_lab.analysis import load, plan

    if args.wandb:
        p.error("--plan reads local pilot runs (give their dirs)")
    if any(not 0 <= w <= 1 for w in args.plan_grid) or len(set(args.plan_grid)) < 2:
        p.error("--plan-grid needs two or more warmdown fractions in [0, 1]")
    if args.plan_resamples < 0:
        p.error("--plan-resamples must be >= 0")
    try:
        runset = load.load_local(args.sweeps)
        plans, notes = plan.plan(runset, args.plan_grid, args.plan_resamples,
                                 tuple(args.anneal_lambdas) if args.anneal_lambdas else None)
    except load.AnalysisInputError as e:
        p.error(str(e))
    print(plan.render(plans, notes), end="")
    print(f"-> {plan.write(plans, notes, args.out)}")


if __name__ == "__main__":
    main()
