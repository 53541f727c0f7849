"""qatlab-analyze: pull runs back (local run records or W&B) and produce the paper's results.

Modules, one job each:
    load.py           local records / W&B runs -> run records + histories -> one table
    coverage.py       usable, excluded (with reasons) and missing runs
    cells.py          cells, paired penalties (qat_lab.summary's pairing), optimal warmdown
    stats.py          paired t / z, wins, exact sign test, Holm
    comparisons.py    every warmdown vs the cell's best; the schedule x bits interaction
    penalty_law.py    P = a + b ln N by OLS, prediction intervals, hold-out, power law
    grid_ratio.py     weight-to-grid distance ratio QAT / FP16
    annealing_law.py  L = L0 + A S1^-alpha - C S2 fitted on loss curves (Tissue et al. 2024)
    pipeline.py       all of the above in order -> Analysis
    parallel.py       annealing fits and figures in forked worker processes (--workers)
    plots.py          the figures;  report.py  report.md, CSVs, fits.json
    wandb_export.py   --to-wandb;   cli.py  the console script
"""
