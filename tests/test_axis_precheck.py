"""A bad top-level axis value is rejected while the command line is normalised, before any config
is composed (the fast path of a typo), with the very line the preflight would print."""

from __future__ import annotations

import pytest

from qat_lab import cli
from qat_lab.config import AXIS_CHECKS
from qat_lab.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("bits=3.5", "bits=3.5 is not valid: use an integer in 2..8, or 16 for no quantisation"),
    ("bits=4,6,9", "bits=9 is not valid"),
    ("warmdown=1.5", "warmdown=1.5 is not valid: use a fraction of the run in [0, 1]"),
    ("lr_mult=0", "lr_mult"),
    ("seed=-1", "seed"),
])
def test_bad_axis_values_fail_without_composing(monkeypatch, override, message):
    def no_compose(*args, **kwargs):
        raise AssertionError("composed a config for a value the command line already shows to be bad")

    monkeypatch.setattr(cli, "_compose", no_compose)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        cli.normalise([override])


def test_good_values_pass_and_interpolations_wait_for_composition():
    assert cli.normalise(["bits=16.0", "warmdown=0.1,0.33", "lr_mult=1.0", "seed=${oc.env:SEED}"]) == [
        "bits=16", "warmdown=0.1,0.33", "lr_mult=1", "seed=${oc.env:SEED}"]


def test_every_numeric_axis_has_a_validator():
    assert set(cli.NUMERIC_AXES) == set(AXIS_CHECKS)
