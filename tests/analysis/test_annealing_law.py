"""The LR-annealing law: areas on every step, parameter recovery on curves made by the law itself."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qat_lab.analysis import annealing_law as al
from qat_lab.schedules import ScheduleConfig

TRUE = {"L0": 1.6, "A": 2.5, "alpha": 0.5, "C": 0.002}
LAM = 0.99


def naive_areas(eta, lam):
    """METHOD section 8 written out literally, one step at a time."""
    s1, s2, m, out1, out2 = 0.0, 0.0, 0.0, [0.0], [0.0]
    for i, e in enumerate(eta):
        m = lam * m + ((eta[i - 1] - e) if i else 0.0)
        s1 += e
        s2 += m
        out1.append(s1)
        out2.append(s2)
    return np.array(out1), np.array(out2)


def curve(warmdown: float, steps: int = 300, params=TRUE, lam=LAM, warmup: int = 0, noise: float = 0.0, seed: int = 0):
    sched = ScheduleConfig(warmdown=warmdown, warmup_steps=warmup)
    eta = al._peak_warmup(np.asarray(sched.trace(steps)), warmup, 1.0)
    s1, s2 = al.areas(eta, lam)
    loss = np.full(steps, np.nan)
    loss[1:] = al.law(params, s1[1:steps], s2[1:steps])
    if warmup:  # what the model sees during warmup is not the law's business: garbage there
        loss[1:warmup] = 9.0
    if noise:
        loss *= np.exp(np.random.default_rng(seed).normal(0, noise, steps))
    return al.Curve(warmdown, loss, al.Trace(eta, warmup, "config"), 1)


def test_areas_match_the_definition_step_by_step():
    eta = np.asarray(ScheduleConfig(warmdown=0.4, decay_shape="cosine").trace(97)) * 0.7
    for lam in (0.9, 0.999):
        s1, s2 = al.areas(eta, lam)
        r1, r2 = naive_areas(eta, lam)
        np.testing.assert_allclose(s1, r1, rtol=1e-13)
        np.testing.assert_allclose(s2, r2, rtol=1e-11, atol=1e-12)


def test_fit_recovers_the_planted_parameters_from_noise_free_curves():
    fit = al.fit_law([curve(0.0), curve(0.5)], LAM)
    assert fit.success, fit.message
    for k, v in TRUE.items():
        assert fit.params[k] == pytest.approx(v, rel=1e-5), k
    assert fit.objective < 1e-10


def test_fit_cell_picks_the_true_lambda_predicts_held_out_curves_and_the_optimum():
    curves = [curve(w) for w in (0.0, 0.1, 0.33, 0.5, 1.0)]
    cl = al.fit_cell("c", curves, ScheduleConfig(), 300, 1.0, empirical_optimum=None,
                     lambdas=(0.95, 0.99, 0.999))
    assert cl.fit_warmdowns == [0.0, 1.0] and cl.heldout_warmdowns == [0.1, 0.33, 0.5]
    assert cl.best_lam == LAM and cl.best.success
    row = next(r for r in cl.by_lambda if r["lambda"] == LAM)
    assert row["heldout"]["r2"] == pytest.approx(1.0, abs=1e-9) and row["heldout"]["mae"] < 1e-6
    # The predicted optimum is the argmin over the candidate grid of the true law's final loss.
    finals = {f: al.law(TRUE, *(a[-1] for a in al.areas(np.asarray(ScheduleConfig(warmdown=f).trace(300)), LAM)))
              for f in al.CANDIDATE_FRACTIONS}
    assert row["predicted_optimum"] == min(finals, key=finals.get)
    assert [r["lambda"] for r in cl.by_lambda] == [0.95, 0.99, 0.999]
    assert cl.to_json()["params"]["C"] == pytest.approx(TRUE["C"], rel=1e-5)


def test_noisy_curves_still_recover_parameters_within_noise():
    fit = al.fit_law([curve(0.0, noise=0.01, seed=1), curve(0.5, noise=0.01, seed=2)], LAM)
    assert fit.success
    assert fit.params["L0"] == pytest.approx(TRUE["L0"], rel=0.05)
    assert fit.params["C"] == pytest.approx(TRUE["C"], rel=0.25)


def test_only_post_warmup_points_are_fitted_and_warmup_counts_at_peak():
    c = curve(0.3, warmup=20)
    k, s1, _, _ = c.points(LAM)
    assert k[0] == 20
    assert s1[0] == pytest.approx(20.0)  # 20 warmup steps counted at peak LR (1.0)
    fit = al.fit_law([c, curve(0.0, warmup=20)], LAM)  # the garbage during warmup is never seen
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], rel=1e-4)


def test_lr_trace_from_config_and_from_logged_lrs_agree():
    record = {"axes": {"steps": 50, "lr_mult": 2.0},
              "config": {"schedule": {"_target_": "qat_lab.schedules.ScheduleConfig", "kind": "wsd", "warmdown": 0.3,
                                      "decay_shape": "linear", "warmup_steps": 5, "final_lr_frac": 0.1}}}
    mult = np.asarray(ScheduleConfig(warmdown=0.3, warmup_steps=5, final_lr_frac=0.1).trace(50))
    hist = pd.DataFrame({"step": np.arange(51.0), "train_loss": 2.0,
                         "lr/muon/matrices": np.r_[0.02 * 2.0 * mult, np.nan]})
    from_config = al.lr_trace(record, hist)
    assert from_config.source == "config" and from_config.note == ""
    assert from_config.warmup == 5
    np.testing.assert_allclose(from_config.eta[5:], 2.0 * mult[5:])
    assert (from_config.eta[:5] == 2.0).all()  # warmup at peak (lr_mult x 1)
    from_log = al.lr_trace({"axes": record["axes"]}, hist)
    assert from_log.source == "metrics.csv lr/muon/matrices"
    np.testing.assert_allclose(from_log.eta, from_config.eta, rtol=1e-12)
    hist.loc[30, "lr/muon/matrices"] *= 1.5  # a schedule the config does not describe
    assert "differs" in al.lr_trace(record, hist).note


def test_cell_curves_average_seeds_and_skip_incomplete_histories():
    sched = {"_target_": "x", "kind": "wsd", "warmdown": 0.5, "decay_shape": "linear", "warmup_steps": 0,
             "final_lr_frac": 0.0}
    records = {f"r{i}": {"axes": {"steps": 10, "lr_mult": 1.0}, "config": {"schedule": sched}} for i in range(3)}
    hists = {"r0": pd.DataFrame({"step": np.arange(11.0), "train_loss": np.r_[np.full(10, 2.0), np.nan]}),
             "r1": pd.DataFrame({"step": np.arange(11.0), "train_loss": np.r_[np.full(10, 4.0), np.nan]}),
             "r2": pd.DataFrame({"step": np.arange(5.0), "train_loss": 1.0})}  # stopped at step 4
    runs = pd.DataFrame({"run_id": ["r0", "r1", "r2"], "warmdown": 0.5, "steps": 10})
    curves, notes = al.cell_curves(runs, records, hists.get)
    assert len(curves) == 1 and curves[0].n_seeds == 2
    np.testing.assert_allclose(curves[0].loss, 3.0)
    assert notes == ["r2: incomplete train_loss history"]
