"""The divergence rules (callbacks/divergence.py, docs/reliability.md)."""

import math

from qat_lab.callbacks.divergence import PATIENCE, DivergenceRule, final_divergence

V = 256
U = math.log(V)


def run(rule, losses):
    for t, loss in enumerate(losses):
        verdict = rule.check(t, loss)
        if verdict:
            return verdict
    return None


def test_non_finite_loss_fires_at_once_even_in_the_grace_period():
    for bad in (math.nan, math.inf):
        v = run(DivergenceRule(V, grace=100), [3.0, bad])
        assert v.step == 1 and v.rule == "non-finite"


def test_fixed_cap_fires_at_once():
    v = run(DivergenceRule(V, grace=100, max_loss=5.0), [4.0, 5.5])
    assert v.step == 1 and v.rule == "max_loss"
    assert run(DivergenceRule(V, grace=100), [60.0] * 50) is None  # no cap: only the grace-period rule


def test_worse_than_uniform_needs_the_grace_period_and_patience():
    rule = DivergenceRule(V, grace=10)
    v = run(rule, [U + 1] * 30)
    assert v.rule == "worse-than-uniform" and v.step == 10 + PATIENCE - 1
    # A spike above uniform that recovers within PATIENCE steps is not divergence.
    spiky = [2.0] * 15 + [U + 1] * (PATIENCE - 1) + [2.0] * 20
    assert run(DivergenceRule(V, grace=10), spiky) is None
    # Above uniform only during the grace period: fine (a fresh model starts there).
    assert run(DivergenceRule(V, grace=10), [U + 2] * 9 + [2.0] * 30) is None


def test_final_rule():
    assert final_divergence(150, math.nan, None, 4.7, V, grace=20).rule == "final-above-unigram"
    assert final_divergence(150, 3.0, 4.8, 4.7, V, grace=20).reason.startswith("final val_bpb 4.800 above the unigram")
    assert final_divergence(150, 3.0, 4.6, 4.7, V, grace=20) is None
    assert final_divergence(150, U + 0.1, None, None, V, grace=20) is not None  # no byte table: ln(vocab)
    # A run no longer than its grace period has not had time to beat the unigram.
    assert final_divergence(12, U + 2, 9.0, 4.7, V, grace=20) is None
