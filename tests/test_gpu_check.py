"""tools/gpu_check.sh on a machine without a GPU: the CPU rows pass, every GPU row is reported as
skipped, and no GPU path is left out of the table."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from utils.device import gpu_available

CPU_ROWS = ["make a small category", "CPU: train 2 epochs", "export the CPU-trained model",
            "CPU: infer.py", "CPU: test.py"]
GPU_ROWS = ["GPU: train 2 epochs",
            "GPU: train 2 epochs, the expert recomputed (expert_cache: none)",
            "GPU: the host-memory cache gives the recomputed losses",
            "GPU: train 2 epochs with AMP", "GPU: last.pdckpt holds AMP's loss scale",
            "GPU: resume the AMP run for a 3rd epoch",
            "GPU: the resumed run goes on with the loss scale",
            "GPU: 2 processes on 2 GPUs, engine: inference", "GPU: run_all.py --gpus 0",
            "GPU: infer.py scores equal CPU's", "GPU: infer.py with TensorRT fp32",
            "GPU: infer.py with TensorRT fp16", "GPU: test.py", "GPU: test.py scores equal CPU's",
            "GPU: test.py, engine: inference", "GPU: Paddle Inference's scores equal CPU's",
            "GPU: benchmark.py --device gpu", "GPU: benchmark.py reports the GPU memory"]


@pytest.mark.slow
@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU: the script runs its rows")
def test_without_a_gpu_the_cpu_rows_pass_and_the_gpu_rows_are_skipped(tmp_path):
    done = subprocess.run(["bash", os.path.join("tools", "gpu_check.sh"), str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    table = lines[lines.index("| check | result | detail |") + 2:]
    rows = {cells[1].strip(): (cells[2].strip(), cells[3].strip())
            for cells in (line.split("|") for line in table)}
    assert list(rows) == CPU_ROWS[:2] + GPU_ROWS[:9] + CPU_ROWS[2:4] + GPU_ROWS[9:12] + \
        CPU_ROWS[4:5] + GPU_ROWS[12:]
    for name in CPU_ROWS:
        assert rows[name][0] == "pass", (name, rows[name])
    for name in GPU_ROWS:
        assert rows[name][0] == "skipped", (name, rows[name])
    assert rows["GPU: train 2 epochs"][1] == "no GPU visible to Paddle"
    assert rows["GPU: 2 processes on 2 GPUs, engine: inference"][1] == "needs 2 GPUs, found 0"
    scores = (tmp_path / "infer_cpu" / "predictions.csv").read_text().splitlines()
    assert scores[0].startswith("path,score") and len(scores) == 1 + 12  # every test image
