"""The penalty law: statsmodels' OLS and prediction intervals equal METHOD's closed form; planted laws recovered."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qat_lab.analysis import penalty_law


def closed_form(x, y, x0, alpha=0.05):
    """METHOD section 7 written out: OLS line, s^2 = RSS/(n-2), and the prediction interval
    yhat0 +- t(1 - alpha/2, n-2) s sqrt(1 + 1/n + (x0 - xbar)^2 / Sxx)."""
    from scipy import stats

    n, xbar, ybar = len(x), x.mean(), y.mean()
    sxx = ((x - xbar) ** 2).sum()
    b = ((x - xbar) * (y - ybar)).sum() / sxx
    a = ybar - b * xbar
    rss = ((y - a - b * x) ** 2).sum()
    s = math.sqrt(rss / (n - 2))
    yhat = a + b * x0
    half = stats.t.ppf(1 - alpha / 2, n - 2) * s * np.sqrt(1 + 1 / n + (x0 - xbar) ** 2 / sxx)
    return {"a": a, "b": b, "se_a": s * math.sqrt(1 / n + xbar ** 2 / sxx), "se_b": s / math.sqrt(sxx),
            "r2": 1 - rss / ((y - ybar) ** 2).sum(), "yhat": yhat, "lo": yhat - half, "hi": yhat + half}


@pytest.mark.parametrize("n", [3, 4, 7])
def test_line_and_prediction_interval_equal_the_closed_form(n: int):
    rng = np.random.default_rng(n)
    x = np.log(np.geomspace(5e6, 1e8, n))
    y = 0.3 - 0.015 * x + rng.normal(0, 0.003, n)
    fit = penalty_law.ols_line(x, y)
    x0 = np.log(np.array([3e6, 2e7, 1.75e8, 3.5e8]))  # inside and outside the fitted range
    ref = closed_form(x, y, x0)
    for key in ("a", "b"):
        assert getattr(fit, key) == pytest.approx(ref[key], abs=1e-10)
    for key in ("se_a", "se_b"):
        assert getattr(fit, key) == pytest.approx(ref[key], rel=1e-9)
    assert fit.r2 == pytest.approx(ref["r2"], abs=1e-10)
    yhat, lo, hi = fit.predict(x0)
    np.testing.assert_allclose(yhat, ref["yhat"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(lo, ref["lo"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(hi, ref["hi"], atol=1e-10, rtol=0)


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
