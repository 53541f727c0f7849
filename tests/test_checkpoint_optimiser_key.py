"""Checkpoints keep optimiser states under "optimisers"; those written as "optimizers" still resume."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from qat_lab.callbacks.checkpoint import Checkpointer


def _module() -> SimpleNamespace:
    weight = torch.nn.Parameter(torch.ones(3))
    return SimpleNamespace(raw_optimisers=[torch.optim.AdamW([weight], lr=0.1)], weight=weight)


def _trained_optimiser_state() -> dict:
    m = _module()
    m.weight.sum().backward()
    m.raw_optimisers[0].step()
    return m.raw_optimisers[0].state_dict()


@pytest.mark.parametrize("key", ["optimisers", "optimizers"])
def test_optimiser_states_are_restored_under_either_key(key):
    saved = _trained_optimiser_state()
    fresh = _module()
    Checkpointer.restore_optimisers(fresh, {key: [saved], "torch_rng": torch.get_rng_state()})
    state = fresh.raw_optimisers[0].state_dict()["state"][0]
    assert torch.equal(state["exp_avg"], saved["state"][0]["exp_avg"]) and int(state["step"]) == 1
