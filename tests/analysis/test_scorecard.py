"""The paper's claims, scored (analysis.scorecard): planted truths give the planted verdicts, and data
lacking sizes, seeds or bits gives 'not testable' with what would make it testable."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qat_lab.analysis import load, pipeline, report, scorecard, synthetic
from tests.analysis.conftest import SIZES, small_planted

SMALL, LARGE = ("m5", "m10", "m20"), ("m50", "m100")


def _claims(tmp_path, holdout=("m100",), **planted) -> dict[str, dict]:
    args = dict(sizes=dict(SIZES), bits=(16, 8, 6, 4), warmdowns=(0.1, 0.33, 0.5), seeds=(0, 1, 2, 3))
    args.update(planted)
    sweep = synthetic.write_sweep(tmp_path, small_planted(**args), histories=False)
    a = pipeline.analyse(load.load_local([sweep]), pipeline.Options(holdout=list(holdout), anneal=False, max_plots=0))
    return {c["id"]: c for c in a.claims}, a


def test_planted_truths_are_supported(tmp_path):
    # INT4 has no warmdown preference at the small sizes and a sharp one at the large ones.
    claims, a = _claims(tmp_path, curvature_at={(4, m): 0.0 for m in SMALL})
    assert {cid: c["verdict"] for cid, c in claims.items()} == dict.fromkeys(scorecard.CLAIMS, scorecard.SUPPORTED)
    c1 = {p["part"].split(" (")[0]: p for p in claims["C1"]["details"]}
    assert c1["INT4 > INT6"]["n"] == 5 * 3 * 4 and c1["INT4 > INT6"]["status"] == "holds"
    assert abs(c1["INT8 ≈ 0"]["mean"]) < scorecard.ZERO_MARGIN
    assert claims["C2"]["n"]["groups"] == 5 * 1  # one group per size (bits 16/8/6/4 of one lr_mult)
    assert claims["C3"]["details"]["mean"] == pytest.approx(1.04)
    assert claims["C4"]["n"]["held_out_points"] == 3  # m100 in each of the 3 INT6 warmdown families
    assert claims["C5"]["details"] == {"5M": "none", "10M": "none", "20M": "none", "50M": "decisive",
                                       "100M": "decisive"}
    fits = json.loads(json.dumps(report.fits_json(a)))
    assert [c["verdict"] for c in fits["claims"]] == ["supported"] * 5
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "## 8. The paper's claims, scored" in text and "| C5 | INT4: no significant" in text


def test_planted_falsehoods_are_contradicted(tmp_path):
    claims, _ = _claims(
        tmp_path,
        penalty={8: (0.05, 0.0), 6: (1.20, -0.060), 4: (0.30, -0.015)},  # INT6 worse than INT4; INT8 far from 0
        optimum_by_bits={6: 0.5},                                        # the INT6 optimum moves
        grid_ratio=1.3,                                                  # INT6 weights far from FP16's
        penalty_offset={(6, "m100"): 0.05},                              # the held-out size is off the law
        curvature_at={(4, m): 0.0 for m in LARGE})                       # preference only at the small sizes
    assert {cid: c["verdict"] for cid, c in claims.items()} == dict.fromkeys(scorecard.CLAIMS, scorecard.CONTRADICTED)
    parts = {p["part"].split(" (")[0]: p["status"] for p in claims["C1"]["details"]}
    assert parts == {"INT4 > INT6": "fails", "INT6 > INT8": "holds", "INT8 ≈ 0": "fails"}
    assert all("INT6" in r["significant_move_at"] for r in claims["C2"]["details"])
    assert claims["C5"]["reason"] == "a decisive preference below a size with none"


def test_one_size_one_seed_no_int6_is_not_testable_and_says_what_is_missing(tmp_path):
    claims, a = _claims(tmp_path, holdout=(), sizes={"m5": 5_000_000}, bits=(16, 4), seeds=(0,))
    assert {cid: c["verdict"] for cid, c in claims.items()} == dict.fromkeys(scorecard.CLAIMS, scorecard.NOT_TESTABLE)
    assert "bits=6" in claims["C1"]["to_test"] and "bits=8" in claims["C1"]["to_test"]
    assert "FP16 and INT8 or INT6" in claims["C2"]["to_test"]
    assert claims["C3"]["reason"] == "no usable INT6 run"
    assert claims["C4"]["reason"].startswith("no INT6 penalties")
    assert "2+ seeds per INT4 cell" in claims["C5"]["to_test"] and "2+ INT4 sizes" in claims["C5"]["to_test"]
    text = report.write_report(a, tmp_path / "rep", ["qatlab-analyze"]).read_text()
    assert "C1 not testable; C2 not testable; C3 not testable; C4 not testable; C5 not testable" in text


def test_without_holdout_sizes_c4_asks_for_them_and_one_seed_makes_c2_untestable(tmp_path):
    claims, _ = _claims(tmp_path, holdout=(), sizes={"m5": 5e6, "m10": 1e7, "m20": 2e7, "m50": 5e7}, seeds=(0,))
    assert claims["C4"]["verdict"] == scorecard.NOT_TESTABLE and "--holdout-sizes" in claims["C4"]["to_test"]
    assert claims["C2"]["verdict"] == scorecard.NOT_TESTABLE and claims["C2"]["reason"] == "one seed per cell"
    assert claims["C5"]["verdict"] == scorecard.NOT_TESTABLE


def test_equivalence_needs_the_whole_interval_inside_the_margin():
    tight = np.array([1.03, 1.04, 1.05, 1.04])
    assert scorecard.equivalence(tight, 1.0, 0.1)[0] == "holds"
    assert scorecard.equivalence(tight + 0.5, 1.0, 0.1)[0] == "fails"
    wide = np.array([0.8, 1.3, 1.0])  # mean 1.03 but the interval reaches past the margin
    assert scorecard.equivalence(wide, 1.0, 0.1)[0] == "undecided"
