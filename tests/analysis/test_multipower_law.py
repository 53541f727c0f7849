"""The Multi-Power Law: LD against the paper's formula written out, fits on curves made by the law.

Curves use absolute LRs (peak PEAK = 1e-3), where parameters of the paper's size are realistic;
qatlab's multiplier units are a rescaling of them (test_rescaling...). With TRUE, T = 1000 steps
and a 20-step warmup, the optimal WSD warmdown is 0.34 and annealing buys ~0.19 nats.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from qat_lab.analysis import annealing_law as al
from qat_lab.analysis import multipower_law as mpl
from qat_lab.schedules import ScheduleConfig

TRUE = {"L0": 3.0, "A": 0.5, "alpha": 0.5, "B": 400.0, "C": 2.0, "beta": 0.5, "gamma": 0.6}
PEAK, T, W = 1e-3, 1000, 20
FRACTIONS = al.CANDIDATE_FRACTIONS


def run_eta(warmdown: float, steps: int = T, warmup: int = W, peak: float = PEAK, **kw) -> np.ndarray:
    """The LR of every update as run (qatlab's warmup ramp included)."""
    return np.asarray(ScheduleConfig(warmdown=warmdown, warmup_steps=warmup, **kw).trace(steps)) * peak


def make_curve(eta: np.ndarray, warmup: int = W, params=TRUE, noise: float = 0.0, seed: int = 0,
               warmdown: float = 0.0) -> al.Curve:
    """Rows 0..T-1 of the law (loss after k updates), garbage during warmup, the trace as lr_trace
    stores it (warmup at peak)."""
    steps = len(eta)
    loss = mpl.law_curve(params, eta, warmup)[:steps]
    loss[:max(warmup, 1)] = 9.0  # what the model sees during warmup is not the law's business
    if noise:
        loss = loss * np.exp(np.random.default_rng(seed).normal(0.0, noise, steps))
    stored = eta.copy()
    stored[:warmup] = eta.max()
    return al.Curve(warmdown, loss, al.Trace(stored, warmup, "config"), 1)


def curve(warmdown: float, **kw) -> al.Curve:
    return make_curve(run_eta(warmdown), warmdown=warmdown, **kw)


def paper_reference(params, eta, warmup):
    """METHOD 8b / the paper in its own 1-based notation, one term at a time: E[0] = eta_0 (the
    last warmup LR, or the first LR without warmup), E[1..T'] the post-warmup LRs; L(t) is qatlab's
    row W + t. Returns (rows, LD, L)."""
    L0, A, alpha, B, C, beta, gamma = (params[k] for k in mpl.PARAM_NAMES)
    post = list(eta[warmup:])
    E = [eta[warmup - 1] if warmup else eta[0]] + post
    S_W = float(np.sum(eta[:warmup]))
    rows, lds, ls = [], [], []
    for t in range(len(post) + 1):
        if warmup + t < 1:
            continue  # no update at all yet
        ld = 0.0
        for k in range(1, t + 1):
            S_k = sum(E[k:t + 1])
            ld += (E[k - 1] - E[k]) * (1.0 - (C * E[k] ** -gamma * S_k + 1.0) ** -beta)
        ld *= B
        rows.append(warmup + t)
        lds.append(ld)
        ls.append(L0 + A * (sum(E[1:t + 1]) + S_W) ** -alpha - ld)
    return np.array(rows), np.array(lds), np.array(ls)


# ------------------------------------------------------------------------------ the law itself

SHORT = {"L0": 3.0, "A": 0.5, "alpha": 0.5, "B": 0.4, "C": 0.5, "beta": 0.5, "gamma": 0.6}
"""For multiplier-unit traces (peak ~1)."""


@pytest.mark.parametrize("eta, warmup", [
    (0.7 * np.asarray(ScheduleConfig(kind="cosine", warmup_steps=7, final_lr_frac=0.1).trace(60)), 7),
    (np.asarray(ScheduleConfig(warmdown=0.4, decay_shape="sqrt", warmup_steps=5).trace(50)), 5),
    (np.asarray(ScheduleConfig(warmdown=0.5).trace(40)), 0),
    # non-monotone: drops, a rise (a negative drop), a plateau, a second decay
    (np.r_[np.full(10, 1.0), np.linspace(1.0, 0.3, 10), np.full(5, 0.6), np.linspace(0.6, 0.05, 15)], 3),
])
def test_vectorised_ld_equals_the_papers_double_loop(eta, warmup):
    rows, ref_ld, ref_l = paper_reference(SHORT, eta, warmup)
    assert rows[0] == max(warmup, 1) and rows[-1] == len(eta)
    np.testing.assert_allclose(mpl.loss_drop(SHORT, eta, warmup), ref_ld, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mpl.loss_drop(SHORT, eta, warmup, rows[::3]), ref_ld[::3], rtol=0, atol=1e-12)
    law = mpl.law_curve(SHORT, eta, warmup)
    np.testing.assert_allclose(law[rows], ref_l, rtol=0, atol=1e-12)
    assert np.isnan(law[:max(warmup, 1)]).all()
    assert np.abs(ref_ld).max() > 1e-3  # the schedules do anneal: the comparison is not 0 == 0
    assert mpl.predicted_final(SHORT, eta[None, :], warmup)[0] == pytest.approx(ref_l[-1], abs=1e-12)


def test_ld_is_zero_for_a_constant_schedule_and_the_warmup_ramp_is_no_drop():
    for sched in (ScheduleConfig(kind="constant", warmup_steps=30), ScheduleConfig(warmdown=0.0, warmup_steps=30),
                  ScheduleConfig(kind="constant")):
        eta = np.asarray(sched.trace(500)) * PEAK
        ld = mpl.loss_drop(TRUE, eta, sched.warmup_steps)
        assert len(ld) == 500 - max(sched.warmup_steps, 1) + 1
        assert (ld == 0.0).all()
        rows = np.arange(max(sched.warmup_steps, 1), 501)
        np.testing.assert_allclose(mpl.law_curve(TRUE, eta, sched.warmup_steps, rows),
                                   3.0 + 0.5 * np.cumsum(eta)[rows - 1] ** -0.5, rtol=1e-14)
    assert mpl.predicted_final(TRUE, eta[None, :])[0] == pytest.approx(3.0 + 0.5 * (500 * PEAK) ** -0.5, rel=1e-14)


def test_blocks_of_rows_give_the_same_ld_at_twenty_thousand_steps(monkeypatch):
    """T = 20,000 with a 30% warmdown: 5,999 change steps (the first warmdown update runs at peak);
    the blocked evaluation is exact."""
    eta = np.asarray(ScheduleConfig(warmdown=0.3, warmup_steps=100).trace(20_000))
    p = mpl.rescale_params(TRUE, 1.0 / PEAK)
    rows = np.unique(np.round(np.linspace(100, 20_000, 400)).astype(int))
    full = mpl.loss_drop(p, eta, 100, rows)
    assert len(mpl._changes(eta, 100)[0]) == 5999
    monkeypatch.setattr(mpl, "_BLOCK_ENTRIES", 6000 * 7)  # 7 rows per block
    np.testing.assert_allclose(mpl.loss_drop(p, eta, 100, rows), full, rtol=1e-13, atol=0)  # BLAS order only
    assert full[rows <= 14_001].max() == 0.0 and full[rows > 14_001].min() > 0 and full[-1] > 0.1


def test_warmup_area_is_the_ramp_as_run_not_the_peak():
    record = {"axes": {"steps": 50, "lr_mult": 2.0},
              "config": {"schedule": {"_target_": "qat_lab.schedules.ScheduleConfig", "kind": "wsd", "warmdown": 0.3,
                                      "decay_shape": "linear", "warmup_steps": 5, "final_lr_frac": 0.1}}}
    sched = ScheduleConfig(warmdown=0.3, warmup_steps=5, final_lr_frac=0.1)
    as_run = 2.0 * np.asarray(sched.trace(50))
    tr = al.lr_trace(record, None)
    assert (tr.eta[:5] == 2.0).all()  # annealing_law's convention: warmup at peak
    np.testing.assert_allclose(mpl.mpl_eta(tr), as_run, rtol=1e-15)
    assert mpl.mpl_eta(tr)[:5].sum() == pytest.approx(2.0 * 6 / 2)  # S_W = peak (W + 1) / 2, not peak W
    assert mpl.mpl_trace(tr)[1] == 5
    # From logged LRs lr_trace's warmup is the first step at peak (W - 1 = 4): the ramp and W = 5 still.
    hist = pd.DataFrame({"step": np.arange(51.0), "train_loss": 2.0,
                         "lr/muon/matrices": np.r_[0.02 * as_run, np.nan]})
    logged = al.lr_trace({"axes": record["axes"]}, hist)
    assert logged.warmup == 4 and logged.source.startswith("metrics.csv")
    eta, w = mpl.mpl_trace(logged)
    np.testing.assert_allclose(eta, as_run, rtol=1e-12)
    assert w == 5 and len(mpl._changes(eta, w)[0]) == len(mpl._changes(as_run, 5)[0])  # no ramp step as a drop
    np.testing.assert_array_equal(mpl.fit_rows(al.Curve(0.3, np.full(50, 2.0), logged, 1), None), np.arange(5, 50))


def test_rescaling_eta_rescales_the_parameters_and_leaves_the_law():
    eta = run_eta(0.4)
    for f in (1.0 / PEAK, 37.0):
        p = mpl.rescale_params(TRUE, f)
        np.testing.assert_allclose(mpl.law_curve(p, f * eta, W)[W:], mpl.law_curve(TRUE, eta, W)[W:], rtol=1e-12)
    assert mpl.rescale_params(mpl.rescale_params(TRUE, 5.0), 0.2) == pytest.approx(TRUE, rel=1e-14)


def test_eta_reaching_zero():
    """An update at LR 0 changes nothing: the law is flat over a zero-LR tail, exactly, and finite."""
    ramp = np.r_[np.full(600, PEAK), np.linspace(PEAK, 0.0, 300), np.zeros(100)]  # exactly 0 from update 899 on
    law = mpl.law_curve(TRUE, ramp, 0)
    assert np.isfinite(law[1:]).all()
    assert (np.diff(law[899:]) == 0.0).all() and law[899] < law[898]  # row 900 is after update 899, at LR 0
    assert mpl.predicted_final(TRUE, ramp[None, :])[0] == law[-1]
    # Zero at the very last update only (a schedule that reaches 0 on its final step).
    last = np.r_[np.full(700, PEAK), np.linspace(PEAK, 0.0, 300)]
    fin = mpl.law_curve(TRUE, last, 0)
    assert np.isfinite(fin[1:]).all() and fin[-1] == fin[-2]
    # The LR comes back after a zero: the formula's limit G = 1 for the drop to 0.
    back = np.r_[np.full(500, PEAK), np.zeros(10), np.full(100, PEAK / 2)]
    ld = mpl.loss_drop(TRUE, back, 0, [600])[0]
    g_half = 1 - (TRUE["C"] * (PEAK / 2) ** -TRUE["gamma"] * 90 * PEAK / 2 + 1) ** -TRUE["beta"]
    assert ld == pytest.approx(TRUE["B"] * (PEAK * 1.0 - PEAK / 2 * g_half), rel=1e-12)  # G = 1 for the drop to 0
    assert mpl.predicted_final(TRUE, back[None, :])[0] == pytest.approx(mpl.law_curve(TRUE, back)[-1], rel=1e-14)
    # qatlab's own schedules never run an update at exactly 0 (r < 1 at the last step).
    for s in (ScheduleConfig(warmdown=1.0), ScheduleConfig(kind="cosine"),
              ScheduleConfig(warmdown=0.02, decay_shape="sqrt")):
        assert min(s.trace(300)) > 0
    # And a fit on a curve with a zero-LR tail is fine (noise-free: exact).
    fit = mpl.fit_mpl([make_curve(ramp, 0), make_curve(np.full(1000, PEAK), 0)], etas=[ramp, np.full(1000, PEAK)])
    assert np.isfinite(fit.objective) and fit.objective < 1e-12
    assert fit.params == pytest.approx(TRUE, rel=1e-4)


def test_predicted_final_is_vectorised_over_candidate_traces():
    sched = ScheduleConfig(warmup_steps=W)
    etas = mpl.candidate_etas(sched, T, PEAK)
    assert etas.shape == (len(FRACTIONS), T) and etas[:, :W - 1].max() < PEAK == etas[:, W - 1].min()  # the ramp
    finals = mpl.predicted_final(TRUE, etas, W)
    np.testing.assert_allclose(finals, [mpl.law_curve(TRUE, e, W)[-1] for e in etas], rtol=1e-13)
    opt, finals2 = mpl.predicted_optimum(TRUE, sched, T, PEAK)
    np.testing.assert_array_equal(finals2, finals)
    assert opt == FRACTIONS[int(np.argmin(finals))] == pytest.approx(0.34)
    assert finals[0] - finals.min() > 0.15  # the anneal matters with these parameters


# ------------------------------------------------------------------------------ fitting

def test_gradient_and_jacobian_match_finite_differences():
    curves = [curve(0.0, noise=0.002, seed=3), curve(0.5, noise=0.002, seed=4)]
    prob = mpl._Problem([mpl._curve_data(c, None, 120, "uniform") for c in curves], al.HUBER_DELTA)
    theta = prob.from_params({"L0": 2.9, "A": 0.6, "alpha": 0.45, "B": 300.0, "C": 3.0, "beta": 0.7, "gamma": 0.5})
    r = prob.residuals(theta)
    assert (np.abs(r) > al.HUBER_DELTA).any() and (np.abs(r) < al.HUBER_DELTA).any()  # both Huber regimes
    _, grad = prob.value_grad(theta)
    J = prob.residual_jac(theta)
    for i in range(7):
        h = 1e-6 * max(abs(theta[i]), 1e-3)
        up, dn = theta.copy(), theta.copy()
        up[i] += h
        dn[i] -= h
        fd = (prob.value(up) - prob.value(dn)) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=1e-5, abs=1e-9 * np.abs(grad).max()), mpl.PARAM_NAMES[i]
        np.testing.assert_allclose(J[:, i], (prob.residuals(up) - prob.residuals(dn)) / (2 * h),
                                   rtol=1e-5, atol=1e-7 * np.abs(J[:, i]).max())


@pytest.fixture(scope="module")
def noise_free_fit():
    return mpl.fit_mpl([curve(0.0), curve(0.5)])


def test_noise_free_curves_are_fitted_exactly(noise_free_fit):
    fit = noise_free_fit
    assert fit.success and fit.trf_success, (fit.message, fit.trf_message)
    assert fit.params == pytest.approx(TRUE, rel=1e-6)
    assert fit.objective < 1e-15
    assert fit.n_starts == mpl.N_POLISH and fit.n_converged >= 1 and fit.n_grid == 7 * 4 * 6 * 4
    assert fit.n_points == 2 * mpl.DEFAULT_MAX_POINTS  # 980 fitted rows per curve, thinned to 400
    assert fit.at_bound == []
    assert mpl.predicted_optimum(fit.params, ScheduleConfig(warmup_steps=W), T, PEAK)[0] == pytest.approx(0.34)


def test_a_warm_start_alone_is_polished():
    start = {k: v * 1.1 for k, v in TRUE.items()}
    fit = mpl.fit_mpl([curve(0.0), curve(0.5)], n_polish=0, warm_start=start, max_points=150)
    assert fit.n_starts == 1 and fit.n_grid == 0
    assert fit.params == pytest.approx(TRUE, rel=1e-6)


@pytest.fixture(scope="module")
def noisy_fit():
    return mpl.fit_mpl([curve(0.0, noise=0.001, seed=1), curve(0.5, noise=0.001, seed=2)])


def test_noisy_fit_recovers_the_parameters_it_can(noisy_fit):
    """0.1% per-step noise on constant + one warmdown: L0, A, alpha are tight and gamma within tens
    of percent; B, C and beta trade off along a valley (G's shape from one warmdown: over seeds B
    came out 320-3300, beta 0.02-1.9) and are not checked one by one, but the loss drop they make
    on the fitted warmdown is (to ~1%), and so are predictions (next test)."""
    p = noisy_fit.params
    assert noisy_fit.success, noisy_fit.message
    assert p["L0"] == pytest.approx(3.0, rel=0.005)
    assert p["A"] == pytest.approx(0.5, rel=0.02) and p["alpha"] == pytest.approx(0.5, rel=0.02)
    assert p["gamma"] == pytest.approx(0.6, rel=0.3)
    rows = np.arange(700, T + 1, 50)
    eta = run_eta(0.5)
    np.testing.assert_allclose(mpl.loss_drop(p, eta, W, rows), mpl.loss_drop(TRUE, eta, W, rows), rtol=0.02)


def test_noisy_fit_predicts_a_held_out_warmdown_and_the_optimum(noisy_fit):
    held = run_eta(0.2)
    true_final = mpl.predicted_final(TRUE, held[None, :], W)[0]
    pred_final = mpl.predicted_final(noisy_fit.params, held[None, :], W)[0]
    assert abs(pred_final / true_final - 1) < 0.002
    q = mpl.curve_quality(curve(0.2), noisy_fit.params)
    assert q["r2"] > 0.9999 and q["mae"] < 0.002 and q["n_points"] == T - W
    opt, finals = mpl.predicted_optimum(noisy_fit.params, ScheduleConfig(warmup_steps=W), T, PEAK)
    assert abs(opt - 0.34) <= 0.02 + 1e-9  # within one step of the candidate grid


def test_fit_in_qatlab_multiplier_units_gives_the_rescaled_parameters():
    curves = [curve(0.0), curve(0.5)]
    etas = [run_eta(0.0) / PEAK, run_eta(0.5) / PEAK]
    fit = mpl.fit_mpl(curves, etas=etas, max_points=200)
    assert fit.params == pytest.approx(mpl.rescale_params(TRUE, 1.0 / PEAK), rel=1e-6)


def test_subsampled_rows():
    c = curve(0.5)
    rows = mpl.fit_rows(c, 50)
    assert len(rows) == 50 and rows[0] == W and rows[-1] == T - 1 and (np.diff(rows) > 0).all()
    assert np.diff(rows).max() - np.diff(rows).min() <= 1  # uniform
    log = mpl.fit_rows(c, 50, "log")
    assert 30 < len(log) <= 50 and log[0] == W and log[-1] == T - 1 and (np.diff(log) > 0).all()
    assert np.median(log) < np.median(rows)  # log spacing crowds the early descent
    # No subsampling: exactly annealing_law's fitted rows.
    np.testing.assert_array_equal(mpl.fit_rows(c, None), c.points(0.99)[0])
    short = curve(0.5)
    short.loss[500] = np.nan
    assert 500 not in mpl.fit_rows(short, None) and len(mpl.fit_rows(short, None)) == T - W - 1
    with pytest.raises(ValueError):
        mpl.fit_rows(c, 50, "cubic")
    fit = mpl.fit_mpl([curve(0.0), c], max_points=60)
    assert fit.n_points == 120 and fit.params == pytest.approx(TRUE, rel=1e-6)


def test_constant_only_fit_flags_the_unidentified_drop_term_and_serialises():
    fit = mpl.fit_mpl([curve(0.0)], max_points=100)
    assert "B" in fit.at_bound  # no LR drop in the data: B = 0
    assert fit.params["L0"] == pytest.approx(3.0, rel=1e-5) and fit.params["alpha"] == pytest.approx(0.5, rel=1e-4)
    js = json.loads(json.dumps(fit.to_json()))
    assert js["params"].keys() == set(mpl.PARAM_NAMES)
    assert js["optimizer"]["at_bound"] == fit.at_bound and js["optimizer"]["starts"] == mpl.N_POLISH
    assert js["points"] == {"n_points": 100, "max_points_per_curve": 100, "spacing": "uniform"}
    assert js["optimizer"]["upper_bounds"]["B"] == pytest.approx(curve(0.0).loss[W] / PEAK)  # the largest fitted loss
