"""The line that says a checkpoint was set aside is plain text: torch marks up some of its error
messages with terminal escape codes (bold), which must not reach the console or qatlab.log."""

from __future__ import annotations

import torch

from qat_lab.callbacks.checkpoint import load_checkpoint


class _NotAllowed:
    """Refused by torch.load(weights_only=True), whose message carries \\x1b[1m ... \\x1b[0m."""

    def __reduce__(self):
        return (print, ("never printed",))


def test_set_aside_line_has_no_escape_codes(tmp_path):
    torch.save({"format": "qatlab-checkpoint/1", "x": _NotAllowed()}, tmp_path / "checkpoint.pt")
    state, note = load_checkpoint(tmp_path, "fingerprint", 10)
    assert state is None
    assert "cannot be read (UnpicklingError: Weights only load failed." in note
    assert "\x1b" not in note and "[1m" not in note and "[0m" not in note
    assert "do those steps only if you trust the source of the checkpoint" in note
    assert list(tmp_path.glob("checkpoint.pt.unusable-*"))
