"""Learning-rate schedules (METHOD section 4) against their closed forms."""

import itertools
import math

import pytest

from qat_lab.errors import ConfigError
from qat_lab.schedules import ScheduleConfig

SHAPES = {
    "linear": lambda r: 1 - r,
    "cosine": lambda r: (1 + math.cos(math.pi * r)) / 2,
    "sqrt": lambda r: 1 - math.sqrt(r),
}
TOTALS = (1, 7, 60, 301)
FRACTIONS = (0.0, 0.1, 0.2, 0.33, 0.5, 0.75, 1.0)
WARMUPS = (0, 1, 5)
FINALS = (0.0, 0.1, 0.5)


def closed_form(kind, shape, t, T, f, W, final):
    """METHOD section 4, written out independently of the implementation."""
    if t < W:
        return (t + 1) / W  # linear warmup reaching peak on the last warmup step
    if kind == "constant":
        return 1.0
    if kind == "cosine":
        r = min((t - W) / max(T - W, 1), 1.0)
        return final + (1 - final) * SHAPES["cosine"](r)
    n = round(f * T)  # decay over the last f*T steps
    t0 = max(T - n, W)
    if t < t0:
        return 1.0
    return final + (1 - final) * SHAPES[shape]((t - t0) / max(T - t0, 1))


def test_wsd_matches_closed_form_everywhere():
    for shape, T, f, W, final in itertools.product(SHAPES, TOTALS, FRACTIONS, WARMUPS, FINALS):
        sched = ScheduleConfig(kind="wsd", decay_shape=shape, warmdown=f, warmup_steps=W, final_lr_frac=final)
        for t in range(T):
            assert sched.multiplier(t, T) == pytest.approx(closed_form("wsd", shape, t, T, f, W, final), abs=1e-12)


@pytest.mark.parametrize("kind", ["cosine", "constant"])
def test_cosine_and_constant_match_closed_form(kind):
    for T, W, final in itertools.product(TOTALS, WARMUPS, FINALS):
        sched = ScheduleConfig(kind=kind, warmup_steps=W, final_lr_frac=final)
        trace = sched.trace(T)
        assert len(trace) == T
        for t in range(T):
            assert trace[t] == pytest.approx(closed_form(kind, "linear", t, T, 0.0, W, final), abs=1e-12)


def test_linear_wd33_by_hand():
    # T=100, wd33: 33 decay steps start at t0=67 at peak; step t runs at 1 - (t-67)/33.
    sched = ScheduleConfig(warmdown=0.33)
    trace = sched.trace(100)
    assert trace[:68] == [1.0] * 68
    assert trace[99] == pytest.approx(1 / 33)
    assert trace[80] == pytest.approx(1 - 13 / 33)
    assert all(a > b for a, b in zip(trace[67:], trace[68:]))


def test_decay_never_reaches_final_before_the_end_and_is_monotone():
    for shape, final in itertools.product(SHAPES, FINALS):
        sched = ScheduleConfig(warmdown=0.5, decay_shape=shape, final_lr_frac=final, warmup_steps=3)
        trace = sched.trace(40)
        assert trace[0] == pytest.approx(1 / 3) and trace[2] == 1.0
        assert all(a >= b for a, b in zip(trace[2:], trace[3:]))
        assert trace[-1] > final and min(trace[2:]) >= final


def test_warmdown_start():
    assert ScheduleConfig(warmdown=0.33).warmdown_start(100) == 67
    assert ScheduleConfig(warmdown=0.2).warmdown_start(1000) == 800
    assert ScheduleConfig(warmdown=1.0).warmdown_start(50) == 0
    assert ScheduleConfig(warmdown=0.0).warmdown_start(50) == 50
    assert ScheduleConfig(kind="constant", warmup_steps=4).warmdown_start(50) == 50
    assert ScheduleConfig(kind="cosine", warmup_steps=4).warmdown_start(50) == 4
    for f, T in itertools.product(FRACTIONS, TOTALS):
        sched = ScheduleConfig(warmdown=f)
        t0 = sched.warmdown_start(T)
        trace = sched.trace(T)
        # The snapshot step t0 still runs at peak; every later step is below it.
        assert all(m == 1.0 for m in trace[:t0 + 1])
        assert all(m < 1.0 for m in trace[t0 + 1:])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_warmdown_zero_is_constant(shape):
    sched = ScheduleConfig(warmdown=0.0, decay_shape=shape, final_lr_frac=0.3)
    for T in TOTALS:
        assert sched.trace(T) == [1.0] * T
    warm = ScheduleConfig(warmdown=0.0, warmup_steps=4)
    assert warm.trace(10) == [0.25, 0.5, 0.75] + [1.0] * 7
    assert ScheduleConfig(kind="constant", warmdown=0.5).trace(10) == [1.0] * 10


@pytest.mark.parametrize("kwargs, key", [
    ({"warmdown": 1.5}, "warmdown"), ({"warmdown": -0.1}, "warmdown"), ({"warmdown": True}, "warmdown"),
    ({"kind": "step"}, "schedule.kind"), ({"decay_shape": "exp"}, "schedule.decay_shape"),
    ({"warmup_steps": -1}, "schedule.warmup_steps"), ({"warmup_steps": 2.5}, "schedule.warmup_steps"),
    ({"final_lr_frac": 1.5}, "schedule.final_lr_frac"),
])
def test_validation_errors_name_the_key(kwargs, key):
    with pytest.raises(ConfigError) as e:
        ScheduleConfig(**kwargs)
    message = str(e.value)
    assert message.startswith(f"{key}=") and "\n" not in message
