"""Checkpoints read safely (callbacks/checkpoint.py) and the history's resume rule (callbacks/history.py)."""

import csv

import pytest
import torch

from qat_lab.callbacks.checkpoint import CHECKPOINT_NAME, FORMAT, load_checkpoint
from qat_lab.callbacks.history import History, rows_before


class _Code:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state(step=4, fingerprint="abc"):
    return {"format": FORMAT, "fingerprint": fingerprint, "step": step, "model": {"w": torch.ones(2)},
            "optimisers": [], "torch_rng": torch.get_rng_state(), "grid_pre_warmdown": None}


def test_a_good_checkpoint_loads(tmp_path):
    torch.save(_state(), tmp_path / CHECKPOINT_NAME)
    state, note = load_checkpoint(tmp_path, "abc", steps=10)
    assert note is None and state["step"] == 4 and torch.equal(state["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("payload, why", [
    ("pickle", "cannot be read"), ("truncated", "cannot be read"), ("foreign", "another configuration"),
    ("step", "outside this run"), ("not-ours", "not a qatlab checkpoint"),
])
def test_an_unusable_checkpoint_is_set_aside(tmp_path, payload, why):
    path = tmp_path / CHECKPOINT_NAME
    marker = tmp_path / "pwned"
    if payload == "pickle":
        torch.save({"format": FORMAT, "x": _Code(marker)}, path)
    elif payload == "truncated":
        torch.save(_state(), path)
        path.write_bytes(path.read_bytes()[:100])
    elif payload == "foreign":
        torch.save(_state(fingerprint="other"), path)
    elif payload == "step":
        torch.save(_state(step=10), path)
    else:
        torch.save({"hello": 1}, path)
    state, note = load_checkpoint(tmp_path, "abc", steps=10)
    assert state is None and why in note and "starting from step 0" in note
    assert not path.exists() and len(list(tmp_path.glob(f"{CHECKPOINT_NAME}.unusable-*"))) == 1
    assert not marker.exists()


def _history(job, n, groups=("g",)):
    h = History(job)
    h.open(list(groups))
    for t in range(n):
        h.write(t, {"train_loss": 1.0 + t, "lr/g": 0.1})
    h.close()


def test_resume_keeps_exactly_the_rows_before_the_checkpoint(tmp_path):
    _history(tmp_path, 9)  # a killed run got to step 8; its checkpoint is at step 5
    assert rows_before(tmp_path / "metrics.csv", 5) is not None and rows_before(tmp_path / "metrics.csv", 12) is None
    h = History(tmp_path)
    h.open(["g"], resume_step=5)
    for t in range(5, 7):
        h.write(t, {"train_loss": 9.0, "lr/g": 0.1})
    h.make_durable()
    h.close()
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert [float(r["train_loss"]) for r in rows] == [1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 9.0]


def test_resume_refuses_a_history_with_a_gap(tmp_path):
    _history(tmp_path, 3)
    with pytest.raises(RuntimeError, match="cannot resume"):
        History(tmp_path).open(["g"], resume_step=5)
