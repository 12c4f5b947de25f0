"""benchmark.py runs end to end on a tiny setting and its two AUC sweeps agree."""
import re
import subprocess
import sys

import pytest

from conftest import ROOT

TINY = ["--img_size", "32", "--batch_size", "4", "--num_train", "4", "--num_test_good", "2",
        "--num_per_defect", "1", "--repeats", "1", "--naive_train_steps", "1",
        "--smooth_grad_samples", "2", "--ig_steps", "2", "--memory_images",
        "--protocol_steps", "1"]


@pytest.mark.slow
def test_benchmark_tables(tmp_path):
    output = tmp_path / "benchmark.md"
    result = subprocess.run([sys.executable, "benchmark.py", *TINY, "--output", str(output)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    tables = output.read_text()
    for row in ("| training, images/s |", "| detection, 4 images, s |",
                "| gradient localization, 2 images, s |", "| saliency `feature_diff`",
                "| FLOPs: training step", "| peak: float32 matmul",
                "| one Fashion-MNIST class (6,000 training + 10,000 test images",
                "| training at 128 px, batch 64, images/s |",
                "| 128 px: images/s at batch 64 / images/s at batch 8 |"):
        assert row in tables, row
    reference, vectorised = re.search(r"AUC ([0-9.]+); the vectorised sweep gives ([0-9.]+)",
                                      tables).groups()
    assert reference == vectorised
