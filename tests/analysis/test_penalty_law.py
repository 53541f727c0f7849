"""The penalty law: closed-form OLS and prediction intervals equal statsmodels; planted laws recovered."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from qat_lab.analysis import penalty_law


@pytest.mark.parametrize("n", [3, 4, 7])
def test_line_and_prediction_interval_equal_statsmodels(n: int):
    rng = np.random.default_rng(n)
    x = np.log(np.geomspace(5e6, 1e8, n))
    y = 0.3 - 0.015 * x + rng.normal(0, 0.003, n)
    fit = penalty_law.ols_line(x, y)
    res = sm.OLS(y, sm.add_constant(x)).fit()
    assert fit.a == pytest.approx(res.params[0], abs=1e-10)
    assert fit.b == pytest.approx(res.params[1], abs=1e-10)
    assert fit.se_a == pytest.approx(res.bse[0], rel=1e-9)
    assert fit.se_b == pytest.approx(res.bse[1], rel=1e-9)
    assert fit.r2 == pytest.approx(res.rsquared, abs=1e-10)
    x0 = np.log(np.array([3e6, 2e7, 1.75e8, 3.5e8]))  # inside and outside the fitted range
    frame = res.get_prediction(sm.add_constant(x0, has_constant="add")).summary_frame(alpha=0.05)
    yhat, lo, hi = fit.predict(x0)
    np.testing.assert_allclose(yhat, frame["mean"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(lo, frame["obs_ci_lower"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(hi, frame["obs_ci_upper"], atol=1e-10, rtol=0)


def test_four_sizes_use_t_with_two_dof():
    fit = penalty_law.ols_line(np.log([15e6, 30e6, 50e6, 100e6]), [0.05, 0.04, 0.036, 0.03])
    assert fit.t_crit == pytest.approx(4.302652729911275)


def test_two_points_are_refused():
    with pytest.raises(ValueError, match="3\\+ distinct"):
        penalty_law.ols_line([1.0, 2.0], [0.1, 0.2])


def test_planted_law_recovered_and_held_out_sizes_inside(synthetic_analysis):
    a, planted = synthetic_analysis
    fams = {(f["axes"]["bits"], f["axes"]["warmdown"]): f for f in a.laws}
    for (bits, wd), fam in fams.items():
        lin = next(law for law in fam["laws"] if law["kind"] == "log-linear")
        pa, pb = planted.penalty[bits]
        # Noise: sd 0.0005 per run, averaged over seeds; the slope is over ln N spanning ~3.
        assert lin["params"]["b"] == pytest.approx(pb, abs=0.002)
        assert lin["params"]["a"] == pytest.approx(pa, abs=0.04)
        assert lin["holdout_coverage"]["n"] == 1  # m100 held out (see conftest)
        assert lin["holdout"][0]["size"] == planted.sizes["m100"]
        assert lin["holdout_coverage"]["inside"] == 1


def test_power_law_fitted_only_where_every_penalty_is_positive():
    df = pd.DataFrame({"used": True, "bits": 6, "warmdown": 0.3, "seed": 0, "model": list("abcd"),
                       "size": [5e6, 15e6, 50e6, 1e8], "penalty": [0.08, 0.05, 0.03, 0.02]})
    laws = penalty_law.penalty_laws(df, ["bits", "warmdown", "model", "seed"], ["bits"])
    kinds = [law["kind"] for law in laws[0]["laws"]]
    assert kinds == ["log-linear", "power"]
    power = laws[0]["laws"][1]
    ref = np.polyfit(np.log(df["size"]), np.log(df["penalty"]), 1)
    assert power["params"]["b"] == pytest.approx(ref[0], rel=1e-10)
    # The band is reported back on the penalty scale (exp of the log-scale interval).
    assert all(p["pi_lower"] > 0 for p in power["fit_points"])
    df.loc[0, "penalty"] = -0.01
    laws = penalty_law.penalty_laws(df, ["bits", "warmdown", "model", "seed"], ["bits"])
    assert [law["kind"] for law in laws[0]["laws"]] == ["log-linear"] and "<= 0" in laws[0]["note"]


def test_one_or_two_sizes_give_a_note_not_a_crash():
    df = pd.DataFrame({"used": True, "bits": 4, "warmdown": 0.3, "seed": [0, 1], "model": "a", "size": 5e6,
                       "penalty": [0.1, 0.12]})
    laws = penalty_law.penalty_laws(df, ["bits", "warmdown", "model", "seed"], [])
    assert laws[0]["laws"] == [] and "1 size" in laws[0]["note"]


def test_seed_level_points_option(synthetic_analysis_seeds):
    a, planted = synthetic_analysis_seeds
    lin = a.laws[0]["laws"][0]
    assert a.laws[0]["points_mode"] == "seeds"
    assert lin["n"] > len(a.laws[0]["sizes"])  # one point per seed, not per size
    assert lin["holdout_coverage"]["n"] == len(planted.seeds)


def test_holdout_tokens_by_name_count_and_suffix():
    df = pd.DataFrame({"model": ["m5", "m15", "m100"], "size": [5_012_345.0, 15_000_000.0, 99_000_000.0]})
    sizes, notes = penalty_law.resolve_holdout(["m5", "15M", "1e8", "7M", "nonsense"], df)
    assert sizes == {5_012_345.0, 15_000_000.0, 99_000_000.0}
    assert len(notes) == 2 and "7M" in notes[0] and "nonsense" in notes[1]
    assert penalty_law.parse_size("250k") == 250_000 and math.isclose(penalty_law.parse_size("1.5e6"), 1.5e6)
