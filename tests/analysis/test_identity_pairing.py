"""Pairing on the run identity: extra config keys, two corpora in folders of the same name, FP16
wildcards; one column per extra key; duplicates are runs of equal identity."""

from __future__ import annotations

import csv
import json

import pytest

from qat_lab.analysis import load, pipeline, report, synthetic
from qat_lab.analysis.cells import CELL_ID
from tests.analysis.conftest import small_planted

FP_A, FP_B = "a1" * 32, "b2" * 32
"""Two corpora: same folder name (the data axis says 'synthetic' for both), other content."""


def _analyse(tmp_path, planted, **options):
    sweep = synthetic.write_sweep(tmp_path, planted, histories=False)
    return pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0, **options))


def _hand_penalties(sweep_records: list[dict], keys: list[str]) -> dict[str, float]:
    """Penalty of every quantised record by hand: the FP16 record equal on the named axes but
    bits, and on `keys` read straight from the records' configs / data facts."""

    def key_of(r: dict) -> tuple:
        axes = {k: v for k, v in r["axes"].items() if k != "bits"}
        extra = [r["data"]["fingerprint"] if k == "data.fingerprint" else r["config"][k.split(".")[0]][k.split(".")[1]]
                 for k in keys]
        return tuple(sorted(axes.items())), tuple(extra)

    fp16 = {key_of(r): r["results"]["val_loss"] for r in sweep_records if r["axes"]["bits"] == 16}
    return {r["job_name"]: r["results"]["val_loss"] - fp16[key_of(r)] for r in sweep_records if r["axes"]["bits"] != 16}


def test_a_swept_config_key_pairs_within_its_value_and_gets_a_column(tmp_path):
    # FP16 at matrix LR 0.04 is much worse: pairing across LRs would give penalties off by +-0.3.
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000}, bits=(16, 4), warmdowns=(0.1, 0.33),
                            seeds=(0, 1), extra={"optim.matrix_lr": (0.005, 0.04)},
                            extra_effect={"optim.matrix_lr": {0.04: 0.3}})
    a = _analyse(tmp_path, planted)
    assert a.design.extra == ["optim.matrix_lr"]
    assert a.table["used"].all() and len(a.table) == 32  # no run is a "duplicate" any more
    records = [run.record for run in a.runset.runs]
    hand = _hand_penalties(records, ["optim.matrix_lr"])
    got = a.table.set_index("job_name")["penalty"]
    assert len(hand) == 16
    for name, value in hand.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
        assert value == pytest.approx(planted.penalty_of(4, 5e6 if "m5" in name else 1e7), abs=0.002)
    assert (a.table.loc[a.table["bits"] == 16, "penalty"] == 0).all()
    # Cells keep the LRs apart and say so in their labels.
    assert set(a.cells["optim.matrix_lr"]) == {0.005, 0.04}
    assert "optim.matrix_lr=0.04" in " ".join(a.cells[CELL_ID])
    out = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).parent
    runs_csv = list(csv.DictReader(open(out / "runs.csv")))
    cells_csv = list(csv.DictReader(open(out / "cells.csv")))
    assert "optim.matrix_lr" in runs_csv[0] and "optim.matrix_lr" in cells_csv[0] and "identity" in runs_csv[0]
    assert {r["optim.matrix_lr"] for r in runs_csv} == {"0.005", "0.04"}


def test_two_corpora_with_the_same_folder_name_never_pair(tmp_path):
    # Corpus B is 0.5 nats harder: pairing INT4 on B with FP16 on A would give penalty ~ +0.5 + P.
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.33,), seeds=(0, 1, 2),
                            extra={"data.fingerprint": (FP_A, FP_B)}, extra_effect={"data.fingerprint": {FP_B: 0.5}})
    a = _analyse(tmp_path, planted)
    assert a.design.extra == ["data.fingerprint"]
    assert set(a.table["data"]) == {"synthetic"}  # the folder name alone cannot tell them apart
    records = [run.record for run in a.runset.runs]
    hand = _hand_penalties(records, ["data.fingerprint"])
    got = a.table.set_index("job_name")["penalty"]
    for name, value in hand.items():
        assert got[name] == pytest.approx(value, abs=1e-12)
        assert value == pytest.approx(planted.penalty_of(4, 5e6), abs=0.002)
    # Full fingerprints in the CSVs, shortened in the labels and in report.md.
    assert set(a.table["data.fingerprint"]) == {FP_A, FP_B}
    assert {c.split("data.fingerprint=")[1].split()[0] for c in a.cells[CELL_ID]} == {FP_A[:10], FP_B[:10]}
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert FP_A[:10] in text and FP_A not in text


def test_fp16_runs_differing_only_in_quantiser_settings_are_one_baseline(tmp_path):
    # bits=4,16 x quant.scale_rule=absmax,percentile: the two FP16 runs are the same training.
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.33,), seeds=(0, 1),
                            extra={"quant.scale_rule": ("absmax", "percentile")},
                            extra_effect={"quant.scale_rule": {"percentile": -0.05}})
    a = _analyse(tmp_path, planted)
    t = a.table
    dups = t[t["excluded"].str.startswith("duplicate of")]
    assert len(dups) == 2 and set(dups["bits"]) == {16} and (dups["excluded"].str.contains("same identity")).all()
    q = t[t["bits"] == 4].set_index("job_name")
    assert q["penalty"].notna().all()
    for name, row in q.iterrows():  # both scale rules against the one FP16 run of their seed
        planted_pen = planted.penalty_of(4, 5e6) + (-0.05 if "percentile" in name else 0.0)
        assert row["penalty"] == pytest.approx(planted_pen, abs=0.002)
    assert set(t.loc[t["bits"] == 16, "quant.scale_rule"].map(str)) == {"*"}


def test_a_run_without_fp16_partner_has_no_penalty_and_the_report_says_why(tmp_path):
    # FP16 ran at matrix LR 0.005 only: the INT4 runs at 0.04 have no baseline.
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 4), warmdowns=(0.33,), seeds=(0, 1),
                            extra={"optim.matrix_lr": (0.005, 0.04)})
    sweep = synthetic.write_sweep(tmp_path, planted, histories=False)
    fp16_at_004 = [job for job in sweep.iterdir() if job.name.startswith("bits=16") and "matrix_lr=0.04" in job.name]
    for job in fp16_at_004:  # first they failed: the partner exists but is left out
        record = json.loads((job / "run.json").read_text())
        record["status"] = "failed"
        (job / "run.json").write_text(json.dumps(record))
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    orphans = a.table[(a.table["bits"] == 4) & (a.table["optim.matrix_lr"] == 0.04)]
    assert len(orphans) == 2 and orphans["penalty"].isna().all()
    assert set(orphans["penalty_note"]) == {"its bits=16 partner was left out (failed, diverged, unfinished or a "
                                            "duplicate)"}
    for job in fp16_at_004:  # then they were never run
        (job / "run.json").unlink()
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    orphans = a.table[(a.table["bits"] == 4) & (a.table["optim.matrix_lr"] == 0.04)]
    assert orphans["penalty"].isna().all()
    assert set(orphans["penalty_note"]) == {"no completed bits=16 run with the same optim.matrix_lr"}
    paired = a.table[(a.table["bits"] == 4) & (a.table["optim.matrix_lr"] == 0.005)]
    assert paired["penalty"].notna().all() and (paired["penalty_note"] == "").all()
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "No penalty** for 2 used quantised run(s): no completed bits=16 run with the same optim.matrix_lr" in text


def test_grid_ratio_needs_an_fp16_run_measured_with_the_same_scale_rule(tmp_path):
    # INT6 percentile runs: their FP16 baseline for the loss is either FP16 run (ANY), but the grid
    # distance of an FP16 run was measured with its own scale rule.
    planted = small_planted(sizes={"m5": 5_000_000}, bits=(16, 6), warmdowns=(0.33,), seeds=(0, 1),
                            extra={"quant.scale_rule": ("absmax", "percentile")})
    sweep = synthetic.write_sweep(tmp_path, planted, histories=False)
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    q = a.table[a.table["bits"] == 6]
    rule = {r.run_id: r.record["config"]["quant"]["scale_rule"] for r in a.runset.runs}
    for _, row in q.iterrows():
        assert rule[row["grid_partner"]] == rule[row["run_id"]]  # the duplicate FP16 run is the percentile ruler
    assert q["grid_ratio_pre_warmdown"].to_numpy() == pytest.approx(planted.grid_ratio)
    # Without the percentile FP16 run, the percentile INT6 runs have no ratio, and the report says why.
    for job in sweep.iterdir():
        if job.name.startswith("bits=16") and "percentile" in job.name:
            (job / "run.json").unlink()
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(anneal=False, max_plots=0))
    q = a.table[a.table["bits"] == 6].set_index("job_name")
    pct = q[q.index.str.contains("percentile")]
    assert pct["grid_ratio_pre_warmdown"].isna().all() and pct["penalty"].notna().all()
    assert a.missing_ratios == {"no FP16 run measured with the same quantiser settings": [6]}


def test_one_penalty_law_per_family_of_the_extra_keys(tmp_path):
    # At matrix LR 0.04 the INT4 penalty is 0.1 higher at every size: its own law, intercept + 0.1.
    planted = small_planted(sizes={"m5": 5_000_000, "m10": 10_000_000, "m20": 20_000_000, "m50": 50_000_000},
                            bits=(16, 4), warmdowns=(0.33,), seeds=(0, 1), extra={"optim.matrix_lr": (0.005, 0.04)},
                            extra_effect={"optim.matrix_lr": {(0.04, 4): 0.1}})
    a = _analyse(tmp_path, planted)
    laws = {fam["axes"]["optim.matrix_lr"]: next(x for x in fam["laws"] if x["kind"] == "log-linear") for fam in a.laws}
    assert set(laws) == {0.005, 0.04} and all(fam["family"].endswith(f"optim.matrix_lr={fmt}")
                                              for fam, fmt in zip(a.laws, ("0.005", "0.04")))
    pa, pb = planted.penalty[4]
    assert laws[0.005]["params"]["a"] == pytest.approx(pa, abs=0.01)
    assert laws[0.04]["params"]["a"] - laws[0.005]["params"]["a"] == pytest.approx(0.1, abs=0.005)
    assert laws[0.04]["params"]["b"] == pytest.approx(pb, abs=0.002)
