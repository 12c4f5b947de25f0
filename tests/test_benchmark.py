"""benchmark.py runs end to end on a tiny setting and its two AUC sweeps agree."""
import re
import subprocess
import sys

from conftest import ROOT

TINY = ["--img_size", "32", "--batch_size", "4", "--num_train", "4", "--num_test_good", "2",
        "--num_per_defect", "1", "--repeats", "1", "--naive_train_steps", "1",
        "--smooth_grad_samples", "2", "--ig_steps", "2", "--memory_images"]


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
                "batch 1: "):
        assert row in tables, row
    onnx_row = re.search(r"\| deployment: ONNX Runtime.*", tables).group(0)
    assert re.search(r"batch 1: [0-9.]+ images/s, batch 8: [0-9.]+ images/s", onnx_row) or \
        "not measured: measuring ONNX Runtime needs" in onnx_row, onnx_row
    reference, vectorised = re.search(r"AUC ([0-9.]+); the vectorised sweep gives ([0-9.]+)",
                                      tables).groups()
    assert reference == vectorised


def test_deployment_rows_say_what_to_install_without_onnxruntime():
    from benchmark import deployment_rows
    from utils.optional import install_hint

    missing = install_hint("onnxruntime", "measuring ONNX Runtime")
    times = {"paddle_batch1": 2.0, "paddle_batch8": 1.0}
    rows = deployment_rows({"onnxruntime": None, "missing": missing}, times, 10)
    assert rows[0].endswith("| batch 1: 5.0 images/s, batch 8: 10.0 images/s |")
    assert rows[1] == f"| deployment: ONNX Runtime | not measured: {missing} |"
    assert "pip install onnxruntime==" in rows[1]
