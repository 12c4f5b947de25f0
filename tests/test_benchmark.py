"""benchmark.py runs end to end on a tiny setting and its two AUC sweeps agree; on a GPU its
memory rows are the GPU's."""
import re
import subprocess
import sys

import numpy as np
import pytest

import benchmark
from benchmark import memory_rows, peak_memory_mb, training_rows
from conftest import ROOT
from metrics import loc_auc_paper

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
                "| that backward with max-pool's ONNX-convertible rule (switches)",
                "| deployment: Paddle Inference, exported gradient-map model (infer.py) | "
                "batch 1: ",
                "| one Fashion-MNIST class (6,000 training + 10,000 test images",
                "| - the same if every convolution FLOP ran at this machine's matmul peak",
                "| - the same on all ",
                "| training at 128 px, batch 64, images/s |",
                "| 128 px: images/s at batch 64 / images/s at batch 8 |"):
        assert row in tables, row
    onnx_row = re.search(r"\| deployment: ONNX Runtime.*", tables).group(0)
    assert re.search(r"batch 1: [0-9.]+ images/s, batch 8: [0-9.]+ images/s", onnx_row) or \
        "not measured: measuring ONNX Runtime needs" in onnx_row, onnx_row
    reference, vectorised = re.search(r"AUC ([0-9.]+); the vectorised sweep gives ([0-9.]+)",
                                      tables).groups()
    assert reference == vectorised


def test_the_naive_auc_loop_gives_the_papers_auc(rng):
    """The naive variant the benchmark times is the reference's loop: same AUC as the sweep."""
    maps = rng.random((3, 16, 16))
    masks = (rng.random((3, 16, 16)) > 0.7).astype(np.float64)
    assert benchmark.reference_loc_auc(maps, masks) == pytest.approx(loc_auc_paper(maps, masks),
                                                                     abs=1e-9)


def test_on_a_gpu_memory_is_the_gpus_and_no_row_is_about_cpu_threads():
    """What a GPU run reports (the numbers are MB as measured): host RSS is labelled as such, the
    GPU memory Paddle allocated gets its own row, and the CPU-thread rows are gone."""
    memory = {"train": 2048.0, "test50": 1024.0, "test500": 3072.0, "test_batch2": 900.0}
    gpu = {"train": 512.0, "test50": 256.0, "test500": 1536.0, "test_batch2": 200.0}
    rows = memory_rows(memory, gpu, "gpu", "- | -")
    assert rows == [
        "| peak host memory (RSS), GB | 3.00 (train.py 2.00; test.py on 50 images 1.00, test.py "
        "on 500 images 3.00) | - | - | - | - |",
        "| peak GPU memory (max_memory_allocated), GB | 1.50 (train.py 0.50; test.py on 50 "
        "images 0.25, test.py on 500 images 1.50) | - | - | - | - |"]
    assert memory_rows(memory, {}, "cpu", "1.2 | 1.9")[0].startswith("| peak memory (RSS), GB |")
    assert len(memory_rows(memory, {}, "cpu", "1.2 | 1.9")) == 1
    speeds = {"train": 120.0, "train_all_threads": 80.0}
    assert training_rows(speeds, "gpu") == ["| training, eager on the GPU | 120.0 images/s |"]
    assert "train_cpu_threads" in training_rows(speeds, "cpu")[0]
    assert all("thread" not in row and "cores" not in row for row in training_rows(speeds, "gpu"))


@pytest.mark.slow
def test_a_child_run_reports_its_peak_gpu_memory_when_it_has_one(tmp_path):
    """The wrapper that runs train.py / test.py for their peak memory also passes on the GPU
    peak (written here by the script itself, as the wrapper does after a run on a GPU)."""
    script = tmp_path / "child.py"
    script.write_text("import sys\nsys.stderr.write('PEAK_GPU_BYTES 3145728\\n')\n")
    peaks = peak_memory_mb([str(script)], str(tmp_path))
    assert peaks["gpu"] == 3.0 and peaks["rss"] > 0
    script.write_text("print('on the CPU')\n")
    assert sorted(peak_memory_mb([str(script)], str(tmp_path))) == ["rss"]


def test_deployment_rows_say_what_to_install_without_onnxruntime():
    from benchmark import deployment_rows
    from utils.optional import install_hint

    missing = install_hint("onnxruntime", "measuring ONNX Runtime")
    times = {"paddle_batch1": 2.0, "paddle_batch8": 1.0}
    rows = deployment_rows({"onnxruntime": None, "missing": missing}, times, 10)
    assert rows[0].endswith("| batch 1: 5.0 images/s, batch 8: 10.0 images/s |")
    assert rows[1] == f"| deployment: ONNX Runtime | not measured: {missing} |"
    assert "pip install onnxruntime==" in rows[1]
