"""The analysis on synthetic run records: planted answers come back; nothing is silently dropped."""

from __future__ import annotations

import json
import shutil

import pytest

from qat_lab.analysis import grid_ratio, load, pipeline, report, synthetic
from qat_lab.analysis.cells import CELL_ID
from tests.analysis.conftest import small_planted


def test_planted_optimum_found_in_every_cell(synthetic_analysis):
    a, planted = synthetic_analysis
    assert len(a.optima) == len(planted.sizes) * len(planted.bits)
    assert set(a.optima["best_warmdown"]) == {planted.optimum}
    assert a.table["used"].all() and len(a.table) == 240
    assert set(a.cells["n"]) == {len(planted.seeds)}


def test_every_other_warmdown_is_significantly_worse_after_holm(synthetic_analysis):
    a, planted = synthetic_analysis
    c = a.comparisons
    assert len(c) == len(a.optima) * (len(planted.warmdowns) - 1)
    assert (c["best_warmdown"] == planted.optimum).all()
    assert (c["mean"] > 0).all() and c["significant"].all()
    assert (c["wins"] == c["n"]).all()
    # 4/4 wins: the exact sign test cannot go below 0.125 with four seeds.
    assert c["p_sign"].min() == pytest.approx(0.125)
    assert (c["p_t_holm"] >= c["p_t"]).all()


def test_optimum_does_not_move_with_bits(synthetic_analysis):
    a, planted = synthetic_analysis
    assert len(a.interaction) == len(planted.sizes)
    for g in a.interaction:
        assert set(g["optimum_by_bits"].values()) == {planted.optimum}
        assert not g["moves"] and g["f_test"]["df_num"] == (len(planted.bits) - 1) * (len(planted.warmdowns) - 1)


def test_penalties_are_paired_and_match_the_planted_law(synthetic_analysis):
    a, planted = synthetic_analysis
    q = a.cells[a.cells["bits"] != 16]
    for _, row in q.iterrows():
        assert row["penalty_mean"] == pytest.approx(planted.penalty_of(row["bits"], row["size"]), abs=0.002)
        assert row["penalty_n"] == len(planted.seeds)
    assert (a.table.loc[a.table["bits"] == 16, "penalty"] == 0).all()


def test_grid_ratio_recovered_only_on_the_shared_grid(synthetic_analysis):
    a, planted = synthetic_analysis
    assert set(a.ratios["bits"]) == {6}
    assert a.ratios["pre_warmdown_mean"].to_numpy() == pytest.approx(planted.grid_ratio, rel=1e-9)
    assert a.ratios["final_mean"].to_numpy() == pytest.approx(planted.grid_ratio, rel=1e-9)
    assert a.missing_ratios == {grid_ratio.OTHER_GRID: [4]}


def test_report_files_hold_every_run_and_cell(synthetic_analysis, tmp_path):
    a, planted = synthetic_analysis
    path = report.write_report(a, tmp_path / "rep", ["qatlab-analyze", "x"])
    out = path.parent
    text = path.read_text()
    for name in ("runs.csv", "cells.csv", "comparisons.csv", "fits.json", "loss_vs_warmdown.png", "penalty_law.png"):
        assert (out / name).exists(), name
    assert len((out / "runs.csv").read_text().strip().splitlines()) == 241
    assert len((out / "cells.csv").read_text().strip().splitlines()) == 1 + len(a.cells)
    fits = json.loads((out / "fits.json").read_text())
    assert len(fits["penalty_laws"]) == 2 * len(planted.warmdowns)
    assert "Optimal warmdown" in text and "0.33 in 15" in text
    assert "1/1" in text and "inside" in text  # held-out coverage


def _sweep_with_trouble(tmp_path):
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000}, bits=(16, 6), warmdowns=(0.1, 0.33),
                            seeds=(0, 1), status={(6, "m5", 0.1, 0): "failed", (16, "m10", 0.33, 1): "diverged",
                                                  (6, "m10", 0.1, 1): "running"})
    return synthetic.write_sweep(tmp_path, planted, histories=False), planted


def test_failed_diverged_running_and_corrupt_runs_are_counted_and_listed(tmp_path):
    sweep, _ = _sweep_with_trouble(tmp_path)
    bad = sweep / "corrupt_job"
    bad.mkdir()
    (bad / "run.json").write_text('{"schema_version": 1, "status": "compl')  # cut short mid-write
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    assert len(a.runset.problems) == 1 and "corrupt_job/run.json" in a.runset.problems[0]
    assert a.coverage.counts == {"completed": 13, "failed": 1, "diverged": 1, "running": 1}
    reasons = dict(zip(a.coverage.excluded["status"], a.coverage.excluded["excluded"]))
    assert reasons["failed"].startswith("failed: RuntimeError")
    assert reasons["diverged"] == "diverged at step 40"
    assert reasons["running"].startswith("still running")
    # Never averaged in: each affected cell x warmdown has one seed fewer.
    cell = a.cells[(a.cells["bits"] == 6) & (a.cells["model"] == "m5") & (a.cells["warmdown"] == 0.1)].iloc[0]
    assert cell["n"] == 1 and cell["n_excluded"] == 1
    # The INT6 partner of a diverged FP16 run has no penalty (no baseline), rather than a wrong one.
    orphan = a.table[(a.table["bits"] == 6) & (a.table["model"] == "m10") & (a.table["warmdown"] == 0.33)
                     & (a.table["seed"] == 1)]
    assert orphan["used"].tolist() == [True] and orphan["penalty"].isna().all()
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "3 run(s) left out" in text and "corrupt_job/run.json" in text and "still running" in text


def test_still_running_sweep_reports_what_is_missing(tmp_path):
    sweep, _ = _sweep_with_trouble(tmp_path)
    # Two jobs not started yet: their dirs do not exist. multirun.yaml says how many jobs there are.
    for name in ("bits=16,lr_mult=1.0,model=m10,seed=0,warmdown=0.1", "bits=6,lr_mult=1.0,model=m10,seed=0,warmdown=0.1"):
        shutil.rmtree(sweep / name)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - bits=6,16\n    - warmdown=0.1,0.33\n"
                                         "    - model=m5,m10\n    - seed=0,1\n")
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    assert a.coverage.expected == {sweep.name: (16, 14)}
    missing = a.coverage.missing
    assert len(missing) == 2 and set(missing["model"]) == {"m10"} and set(missing["bits"]) == {6, 16}
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "incomplete sweep" in text and "2 not started yet" in text and "1 run(s) still running" in text
    assert (tmp_path / "rep" / "missing.csv").exists()


def test_merged_sweeps_pair_across_sweeps_and_duplicates_are_flagged(tmp_path):
    p16 = small_planted(sizes={"m5": 5_000_000}, bits=(16,), warmdowns=(0.33,), seeds=(0, 1))
    p6 = small_planted(sizes={"m5": 5_000_000}, bits=(6,), warmdowns=(0.33,), seeds=(0, 1))
    a_dir = synthetic.write_sweep(tmp_path, p16, sweep="fp16")
    b_dir = synthetic.write_sweep(tmp_path, p6, sweep="int6")
    copy = shutil.copytree(b_dir, tmp_path / "int6_copy")
    a = pipeline.analyse(load.load_local([a_dir, b_dir, copy, b_dir]), pipeline.Options(anneal=False, max_plots=0))
    assert len(a.table) == 6  # b_dir named twice is read once; its copy is read
    used = a.table[a.table["used"]]
    assert len(used) == 4
    assert used.loc[used["bits"] == 6, "penalty"].notna().all()  # partners found in the other sweep
    dups = a.table[a.table["excluded"].str.startswith("duplicate")]
    assert len(dups) == 2


def test_one_seed_one_size_says_so_instead_of_crashing(tmp_path):
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.1, 0.33), seeds=(0,))
    sweep = synthetic.write_sweep(tmp_path, planted)
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "single common seed" in text and "1 size to fit on" in text and "one seed" in text
    assert a.comparisons["p_t"].isna().all()
    assert a.interaction[0]["f_test"]["df_num"] is None


def test_a_sweep_where_every_run_failed_still_gets_a_report(tmp_path):
    failed = {(b, "m5", w, s): "failed" for b in (16, 6) for w in (0.1, 0.33) for s in (0, 1)}
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 6), warmdowns=(0.1, 0.33), seeds=(0, 1), status=failed)
    a = pipeline.analyse(load.load_local([synthetic.write_sweep(tmp_path, planted)]), pipeline.Options(max_plots=0))
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "No usable run" in text and "8 run(s) left out" in text and "No usable runs." in text


def test_no_records_is_an_input_error(tmp_path):
    with pytest.raises(load.AnalysisInputError, match="no run records"):
        pipeline.analyse(load.load_local([tmp_path]))
    with pytest.raises(load.AnalysisInputError, match="no such file"):
        load.load_local([tmp_path / "nope"])


def test_cells_are_labelled_by_the_axes_that_vary(synthetic_analysis):
    a, _ = synthetic_analysis
    assert a.shown == ["bits", "model"]
    assert "bits=6 model=m5" in set(a.cells[CELL_ID])


def test_metrics_csv_irregular_lines_go_to_pandas(tmp_path):
    import math

    path = tmp_path / "metrics.csv"
    path.write_text("step,train_loss,val_loss\n0,3.5,\n1,3.4,2.9\n2,3.3")  # the last line cut short mid-write
    frame = load.read_metrics_csv(path)
    assert frame["step"].tolist() == [0, 1, 2] and frame["val_loss"].tolist()[1] == 2.9
    assert math.isnan(frame["val_loss"].iloc[0]) and math.isnan(frame["val_loss"].iloc[2])
    path.write_text("step,train_loss\n0,3.5\n1,oops\n")
    with pytest.raises(ValueError):
        load.read_metrics_csv(path)
    path.write_text("step,train_loss\n0,3.5,1,2\n")
    with pytest.raises(ValueError):
        load.read_metrics_csv(path)


def test_expected_jobs_count_the_experiments_sweep_and_the_command_line(tmp_path):
    # An experiment's hydra.sweeper.params sweep too; a command-line override of a key replaces it.
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      bits: 4,6\n      seed: 0,1,2\n      model: cpu-xs\n"
        "  overrides:\n    task:\n    - experiment=x\n    - seed=0,1\n    - warmdown=0.1,0.33\n")
    assert load._expected_jobs(tmp_path) == 2 * 2 * 2
