"""Training and scoring throughput at the protocols' sizes, this code against the former default.

Each measurement runs in a process of its own, because the former default differs from this code
in a process-wide setting (glibc's malloc handing large blocks back, utils/device.py) as well as
in the convolutions (eager instead of oneDNN, onednn_conv.py). benchmark.py prints the rows.
"""
import json
import os
import statistics
import subprocess
import sys
from typing import Dict

VARIANTS = {"default": "oneDNN convolutions, max-pools' recorded arg-max, scoring as one oneDNN "
                       "program, freed memory kept",
            "former": "eager convolutions and max-pool backward, glibc's default malloc"}
ALL_CORES = "all_cores"  # this code with `train_cpu_threads: 0`: what the other cores bring
# The Fashion-MNIST protocol: 6,000 training and 10,000 test images at 32 px, epochs 0..51,
# batch 64, the test set scored every 10 epochs (0, 10, ..., 50); each of those evaluations may
# save a best_model, which scores the training images for its threshold, as does final_model.
FASHION_MNIST = {"train": 6000, "test": 10000, "epochs": 52, "evaluations": 6}

_CHILD = """import json, sys, time
sys.path.insert(0, {root!r})
import utils.quiet
import numpy as np, paddle
from engine import PredictorRunner
from loss_functions import anomaly_score, build_loss
from network import build_cloner
from max_pool_grad import recorded_max_pools
from onednn_conv import OnednnStages, onednn_convolutions
from train_step import DistillationStep
from utils.config import build_config
from utils import device
from vgg import Expert

size, batch, steps, variant = {size}, {batch}, {steps}, {variant!r}
if variant == "former":
    device.keep_freed_memory = lambda: False
config = build_config(base=dict(mvtec_img_size=size, batch_size=batch, lamda=0.01, seed=0,
                                device="cpu", train_cpu_threads=int(variant != "all_cores")))
device.setup_device(config)
device.use_training_threads(config, "cpu")
onednn = variant != "former"
paddle.seed(0)
cloner = build_cloner(config)
step = DistillationStep(cloner, build_loss(config))
optimizer = paddle.optimizer.Adam(parameters=cloner.parameters())
rng = np.random.default_rng(0)
images = paddle.to_tensor(rng.random((batch, 3, size, size), dtype=np.float32))
stages = [paddle.to_tensor(np.maximum(rng.standard_normal((batch, c, size // s, size // s)), 0)
                           .astype(np.float32)) for c, s in ((128, 4), (256, 8), (512, 16),
                                                             (512, 32))]


def train_steps(count):
    step.train()
    with onednn_convolutions(cloner, onednn), recorded_max_pools(cloner, onednn):
        for _ in range(count):
            loss = step(images, stages)
            loss.backward()
            optimizer.step()
            optimizer.clear_grad()
    float(loss)


stages_of = OnednnStages(cloner) if onednn else cloner  # as train.py scores


def score_batches(count):
    cloner.eval()
    with paddle.no_grad():
        for _ in range(count):
            anomaly_score(stages_of(images), stages, 0.01).numpy()


def timed(fn, count):
    fn(1)  # builds kernels and programs for these shapes
    started = time.perf_counter()
    fn(count)
    return batch * count / (time.perf_counter() - started)


result = dict(train=timed(train_steps, steps), score=timed(score_batches, steps))
if {expert}:
    runner = PredictorRunner(Expert(), [3, size, size], use_gpu=False,
                             cpu_threads=device.cpu_thread_count(config))
    result["expert"] = timed(lambda count: [runner(images.numpy()) for _ in range(count)], steps)
print("RATES " + json.dumps(result))
"""


def measure(size: int, batch: int, variant: str, steps: int, expert: bool = False) -> Dict:
    """Images/s of training steps, scoring (and the expert's outputs) in a fresh process."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = _CHILD.format(root=root, size=size, batch=batch, steps=steps, variant=variant,
                           expert=expert)
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True,
                          text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RATES ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"training speed at {size} px, batch {batch} ({variant}) failed:\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(lines[-1][len("RATES "):])


def interleaved_rates(cases: Dict[str, tuple], repeats: int, steps: int) -> Dict[str, Dict]:
    """Median images/s of every case (name -> (size, batch, variant, expert)), the cases run in
    turn `repeats` times so that a change in the machine's load hits them alike."""
    runs = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (size, batch, variant, expert) in cases.items():
            runs[name].append(measure(size, batch, variant, steps, expert))
    return {name: {key: statistics.median(run[key] for run in values) for key in values[0]}
            for name, values in runs.items()}


def fashion_mnist_minutes(rates: Dict[str, float]) -> float:
    """Minutes for one Fashion-MNIST class at these rates: the expert's outputs of both splits,
    the epochs, and the scoring (every evaluation saving a best_model, the worst case)."""
    p = FASHION_MNIST
    scored = p["evaluations"] * p["test"] + (p["evaluations"] + 1) * p["train"]
    seconds = ((p["train"] + p["test"]) / rates["expert"] + p["epochs"] * p["train"] / rates["train"]
               + scored / rates["score"])
    return seconds / 60.0


def fashion_mnist_peak_minutes(peak: float, cloner_flops: float, expert_flops: float) -> float:
    """A floor for one Fashion-MNIST class: minutes if every FLOP ran at `peak` FLOP/s, given the
    forward FLOPs of one 32 px image through the cloner and the expert (a training step is about
    three forwards: the forward, the input gradient and the weight gradient)."""
    p = FASHION_MNIST
    scored = p["evaluations"] * p["test"] + (p["evaluations"] + 1) * p["train"]
    flops = (3 * p["epochs"] * p["train"] + scored) * cloner_flops \
        + (p["train"] + p["test"]) * expert_flops
    return flops / peak / 60.0
