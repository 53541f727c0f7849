"""`make gpu-check` in its CPU mode (no GPU here or in CI): the same code end to end on tiny models,
a complete report that names what was skipped, exit 0. Its GPU mode is run on a GPU machine."""

from __future__ import annotations

import pytest
import torch

from bench import gpu_check

pytestmark = [pytest.mark.slow, pytest.mark.skipif(torch.cuda.is_available(), reason="GPU mode: run make gpu-check")]


def test_cpu_mode_writes_a_complete_report_and_exits_0(tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--out", str(out)]) == 0
    text = out.read_text()
    for heading in ("## 1. Throughput", "## 2. bf16-mixed vs fp32", "## 3. Muon's Newton-Schulz",
                    "## 4. A 4-job sweep through the real CLI", "## 5. Warnings"):
        assert heading in text
    assert "No CUDA GPU here" in text and "skipped: 15m, 50m, 100m and torch.compile" in text
    assert text.count("**ok**") == 4
    assert "| cpu-xs | 16 | no |" in text and "| cpu-xs | 6 | no |" in text


def test_peaks_are_looked_up_by_name_most_specific_first():
    assert gpu_check.peak_for("NVIDIA H100 PCIe")[0] == 756e12
    assert gpu_check.peak_for("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert gpu_check.peak_for("NVIDIA H200")[0] == 989e12
    flops, source = gpu_check.peak_for("Some Future GPU")
    assert flops is None and "GPU_PEAKS" in source
