"""qatlab-analyze: pull runs back (local run records or W&B) and produce the paper's results.

Modules, one job each:
    load.py           local records / W&B runs (summary + history) -> run records + histories -> one table
    design.py         the keys that tell runs apart (named axes + extra config keys), --compare,
                      cells, groups of cells differing only in bits (FP16 wildcards)
    coverage.py       usable, excluded (with reasons), duplicates (equal identity) and missing runs
    cells.py          cells, paired penalties (records.identity's pairing), optimum along the key
    stats.py          paired t / z, wins, exact sign test, Holm (scipy, statsmodels)
    comparisons.py    every level vs the cell's best; the key x bits interaction
    penalty_law.py    P = a + b ln N by OLS, prediction intervals, hold-out, power law
    grid_ratio.py     weight-to-grid distance ratio QAT / FP16, measured with the same ruler
    annealing_law.py  L = L0 + A S1^-alpha - C S2 fitted on loss curves (Tissue et al. 2024)
    multipower_law.py the Multi-Power Law (Luo et al. 2025)
    cell_fit.py       one cell's curves, both laws fitted on them, scored on held-out curves, the better chosen
    fit_cache.py      the laws' fits kept on disk by what they were fitted on (a re-run reuses them)
    plan.py           --plan: predicted optimum per cell from pilot runs, interval, reduced sweep command
    scorecard.py      the paper's claims C1-C5: statistic, n, verdict
    arms.py           a QAT-start study's arms per cell: FP16, QAT from init, best late QAT, PTQ RTN/clip/GPTQ
    pipeline.py       all of the above in order -> Analysis
    parallel.py       annealing fits and figures in forked worker processes (--workers)
    plots.py          the figures;  markdown.py  numbers and tables;  report.py  report.md, CSVs, fits.json
    wandb_export.py   --to-wandb;   cli.py  the console script
    synthetic.py      sweeps with planted answers (tests and the benchmark)
"""
