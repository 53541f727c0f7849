"""A job that differs from an already composed one only in top-level axis values gets its config
from that sibling (one Hydra composition per sweep instead of one per job): it must equal what
Hydra's own composition of the job gives, key for key, for every kind of job."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from qat_lab import cli


@pytest.fixture(autouse=True)
def fresh_cache():
    cli._COMPOSED.clear()
    yield
    cli._COMPOSED.clear()


def _hydra(job):
    cfg = cli._compose(job, with_hydra=True)  # always a real composition (and cached)
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)


@pytest.mark.parametrize("first, second", [
    (["bits=16", "warmdown=0.33"], ["bits=4", "warmdown=0.1"]),
    (["experiment=cpu_qat_start", "model=cpu-xs", "bits=4", "qat_start=lr0.15", "warmdown=0.1", "seed=0"],
     ["experiment=cpu_qat_start", "model=cpu-xs", "bits=6", "qat_start=lr0.15", "warmdown=0.33", "seed=3"]),
    (["optim=adamw", "lr_mult=1", "seed=0"], ["optim=adamw", "lr_mult=0.5", "seed=2"]),
])
def test_a_sibling_derived_config_equals_hydras_composition(first, second):
    with cli._config_module():
        cli._compose(first, with_hydra=True)
        derived = cli._compose(second)
        assert tuple(second) not in cli._COMPOSED  # it really was derived, not composed
        derived = OmegaConf.to_container(derived, resolve=True)
        assert derived == _hydra(second)
        assert derived != _hydra(first)


def test_a_job_with_another_group_is_composed_not_derived():
    with cli._config_module():
        cli._compose(["bits=4"], with_hydra=True)
        cfg = cli._compose(["bits=4", "model=cpu-s"])
        assert ("bits=4", "model=cpu-s") in cli._COMPOSED and cfg.model.name == "cpu-s"
