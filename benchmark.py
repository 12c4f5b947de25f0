"""Speed and memory of every phase on generated data, against naive variants measured in the same run.

    python benchmark.py                                  # 128 px, batch 8, 40 train / 30 test
    python benchmark.py --img_size 256 --batch_size 16 --output benchmark.md

On a synthetic category (utils/demo_data.py; a random VGG16 expert, so nothing is downloaded) it
measures, in one process and interleaved `--repeats` times (the median is reported):

- training images/s: the default step (expert outputs cached, eager cloner step with one CPU
  thread) against the same step with all cores, the forward compiled with paddle.jit.to_static
  (and the peak memory of both), and the naive step (eager, the expert recomputed every step
  with gradients computed for its weights, Paddle's default single thread);
- detection (scores of all test images) and gradient localization (maps of the defective images
  and the paper's localization AUC) against eager, one-image-at-a-time paddle.grad and the
  reference 1000-threshold AUC loop (whose result must be the same);
- saliency images/s for every localization method (smooth grad and integrated gradients with
  `--smooth_grad_samples` / `--ig_steps`, fewer than the defaults 50 / 100), and a batch's
  saliency cost against one forward+backward of that batch;
- the hand-written backward of a batch with max-pool's ONNX-convertible rule ("switches")
  against max_unpool2d's, both in Paddle Inference;
- deployment (as infer.py runs it: the exported gradient-map model) in images/s at batch 1 and
  8, with Paddle Inference and, when paddle2onnx and onnxruntime are installed, with ONNX
  Runtime on the same model exported as model.onnx;
- FLOPs of a training step and an evaluation pass counted from the layer shapes (conv:
  2 Cin Cout 9 Hout Wout per image forward, backward about twice that) and the achieved FLOP/s as a
  fraction of this machine's peak, taken from a large float32 matmul timed in the same run;
- peak memory (RSS) of train.py (one epoch) and of test.py on `--memory_images` generated test
  images, each in its own process; on a GPU also the peak GPU memory Paddle allocated
  (paddle.device.cuda.max_memory_allocated), and no rows about CPU threads;
- the protocols' training against the former default (eager convolutions, glibc's default
  malloc), each measurement in its own process (utils/training_speed.py): one Fashion-MNIST
  class (32 px, batch 64) estimated from its training, scoring and expert rates, and 128 px at
  the paper's batch of 64 against batch 8.

It prints Markdown tables (written to --output as well). Machine load changes the numbers: the
load average at the start and end is printed with them.
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import cv2
import numpy as np
import paddle
from sklearn.metrics import auc

from anomaly_map import AnomalyMapModel, ScoreModel, gradient_map
from backprop import InputGradient
from dataloader import build_loader, build_test_loader
from dataset import MVTecDataset
from engine import (PredictorRunner, export_layer, make_predictor,
                    native_output_silenced, run_predictor)
from export_model import write_model
from metrics import PAPER_THRESHOLDS, loc_auc_paper
from network import build_cloner
from test_functions import MapGenerator, evaluate, make_scorer
from train import FINAL_MODEL, Trainer
from utils.config import build_config
from utils.demo_data import make_demo_category
from utils.device import cpu_thread_count, setup_device, usable_cores
from utils.files import atomic_write_text
from utils.onnx_runtime import make_session, run_session
from utils.errors import UserError
from utils.optional import import_optional, require
from utils.training_speed import (ALL_CORES, VARIANTS, fashion_mnist_minutes,
                                  fashion_mnist_peak_minutes, interleaved_rates)
from vgg import Expert, StagedFeatures

# Measured elsewhere on a 2-core machine: 40 train / 30 test / 20 defective images, 128 px,
# batch 8, random expert.
ANCHORS = {"pytorch": {"train": 4.7, "detect": 2.2, "maps": 4.8, "auc": 2.2, "loc": 7.1,
                       "memory": 1.2},
           "paddle_port": {"train": 0.40, "detect": 27.0, "loc": 52.0, "memory": 1.9}}
METHODS = ("gradients", "gbp", "smooth_grad", "integrated_gradients", "feature_diff")
DEPLOYMENT_BATCHES = (1, 8)


def conv_flops(net: StagedFeatures, size: int) -> float:
    """Forward FLOPs of one image up to the last stage: 2 Cin Cout 9 Hout Wout per conv."""
    flops, side = 0.0, size
    for i, layer in enumerate(net.features):
        if i > net.stage_ends[-1]:
            break
        if isinstance(layer, paddle.nn.Conv2D):
            c_out, c_in = layer.weight.shape[:2]
            flops += 2.0 * c_in * c_out * 9 * side * side
        elif isinstance(layer, paddle.nn.MaxPool2D):
            side //= 2
    return flops


class _MatMul(paddle.nn.Layer):
    def __init__(self, size: int):
        super().__init__()
        self.weight = self.create_parameter([size, size])

    def forward(self, x):
        return paddle.matmul(x, self.weight)


def matmul_peak(threads: int, device: str, size: int = 4096,
                repeats: int = 5) -> Dict[str, float]:
    """FLOP/s of the fastest of `repeats` float32 [size, size] matmuls, in NumPy (OpenBLAS) and
    in Paddle Inference (oneDNN, what the evaluation uses); the larger is this machine's peak.
    On a GPU: Paddle's matmul (cuBLAS)."""
    if device == "gpu":
        x = paddle.rand([size, size])

        def product():
            paddle.matmul(x, x)
            paddle.device.synchronize()

        product()
        return {"cublas": 2.0 * size ** 3 / min(_timed(product) for _ in range(repeats))}
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    runner = PredictorRunner(_MatMul(size), [size], use_gpu=False, cpu_threads=threads)
    result = {}
    for name, fn in (("numpy", lambda: a @ a), ("onednn", lambda: runner(a))):
        fn()
        result[name] = 2.0 * size ** 3 / min(_timed(fn) for _ in range(repeats))
    return result


def _timed(fn: Callable) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def interleaved(variants: Dict[str, Callable], repeats: int) -> Dict[str, float]:
    """Median seconds of each variant, the variants run in turn `repeats` times."""
    times = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(_timed(fn))
    return {name: statistics.median(values) for name, values in times.items()}


def by_batches(fn: Callable, images: np.ndarray, batch_size: int) -> None:
    """Call fn on consecutive batches of images, as a test loader would feed them."""
    for start in range(0, len(images), batch_size):
        fn(images[start:start + batch_size])


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. '1.04 / 1.59 / 1.86'."""
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def reference_loc_auc(maps: np.ndarray, masks: np.ndarray) -> float:
    """The reference code's localization AUC: binarise and open at each of 1000 thresholds."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    tpr, fpr = [], []
    for t in PAPER_THRESHOLDS:
        opened = np.stack([cv2.morphologyEx((m >= t).astype(np.uint8), cv2.MORPH_OPEN, kernel)
                           for m in maps]).astype(np.float64)
        tpr.append(np.sum(opened * masks) / np.sum(masks))
        false_positive = np.sum(opened * (1 - masks))
        fpr.append(false_positive / (false_positive + np.sum((1 - opened) * (1 - masks))))
    return float(auc(fpr, tpr))


def compile_step(step: paddle.nn.Layer) -> Callable:
    """The training forward as a static program (paddle.jit.to_static), for comparison."""
    static = paddle.jit.to_static(step.forward, full_graph=True)

    def run(images, expert_stages):
        with native_output_silenced():
            return static(images, expert_stages)

    run.train = step.train
    return run


_STEP_MEMORY = """import sys
import numpy as np, paddle
from loss_functions import build_loss
from network import build_cloner
from train_step import DistillationStep
from utils.config import build_config
config = build_config(base={settings!r})
paddle.base.core.set_num_threads({threads})
cloner = build_cloner(config)
step = DistillationStep(cloner, build_loss(config))
if {compiled}:
    step = paddle.jit.to_static(step, full_graph=True)
optimizer = paddle.optimizer.Adam(parameters=cloner.parameters())
size, batch = config["mvtec_img_size"], config["batch_size"]
stages = [paddle.rand([batch, c, size // s, size // s]) for c, s in
          ((128, 4), (256, 8), (512, 16), (512, 32))]
for _ in range(12):
    step(paddle.rand([batch, 3, size, size]), stages).backward()
    optimizer.step()
    optimizer.clear_grad()
"""


def step_memory(work: str, config: dict, compiled: bool) -> float:
    """Peak RSS (MB) of a process running 12 training steps, eager or compiled."""
    path = os.path.join(work, "step_memory.py")
    settings = {key: config[key] for key in ("mvtec_img_size", "batch_size", "lamda")}
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(_STEP_MEMORY.format(settings=settings, compiled=compiled,
                                         threads=cpu_thread_count(config) if compiled else 1))
    return peak_rss_mb([path], os.path.dirname(os.path.abspath(__file__)))


class NaiveTraining:
    """The earlier code's step: eager, the expert run every step with its weights' gradients."""

    def __init__(self, trainer: Trainer, config: dict, steps: int):
        self.expert = Expert()
        self.expert.set_state_dict(trainer.expert.state_dict())
        for parameter in self.expert.parameters():
            parameter.stop_gradient = False
        self.cloner = build_cloner(config)
        self.criterion = trainer.criterion
        self.optimizer = paddle.optimizer.Adam(learning_rate=config["learning_rate"],
                                               parameters=self.cloner.parameters())
        images = trainer.train_cache.images  # on a GPU the cache is a host array
        self.images = images if isinstance(images, paddle.Tensor) else paddle.to_tensor(images)
        self.batch_size, self.steps = config["batch_size"], steps

    def __call__(self) -> None:
        paddle.base.core.set_num_threads(1)
        self.cloner.train()
        for step in range(self.steps):
            start = step * self.batch_size
            images = self.images[start:start + self.batch_size]
            loss = self.criterion(self.cloner(images), self.expert(images))
            loss.backward()
            self.optimizer.step()
            self.optimizer.clear_grad()  # the expert's gradients pile up, as in the earlier code
        float(loss)


def naive_scores(score_model: ScoreModel, loader) -> np.ndarray:
    """Eager scores with autograd recording (the expert's weights require gradients)."""
    scores = []
    for images, _, _, _ in loader:
        scores.append(score_model(images).numpy())
    return np.concatenate(scores)


def naive_maps(score_model: ScoreModel, loader) -> np.ndarray:
    """Gradient maps one image at a time with paddle.grad, eagerly."""
    maps = []
    for images, _, _, _ in loader:
        for image in images:
            x = image.unsqueeze(0)
            x.stop_gradient = False
            (grad,) = paddle.grad(score_model(x).sum(), x)
            maps.append(gradient_map(grad).numpy())
    return np.concatenate(maps)


# Runs a script and reports the process's peak RSS (VmHWM, Linux): a child's ru_maxrss would
# include the RSS of this large benchmark process at fork time. After a run on a GPU, also the
# peak GPU memory Paddle allocated there.
_PEAK_WRAPPER = """import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    status = open("/proc/self/status").read().split("VmHWM:")[1].split()[0]
    sys.stderr.write("PEAK_RSS_KB " + status + "\\n")
    import paddle
    if paddle.device.get_device().startswith("gpu"):
        allocated = paddle.device.cuda.max_memory_allocated()
        sys.stderr.write("PEAK_GPU_BYTES " + str(allocated) + "\\n")
"""


def peak_memory_mb(script_and_args: List[str], cwd: str) -> Dict[str, float]:
    """Run `python script args...` in a new process: its peak resident memory in MB ('rss') and,
    when it ran on a GPU, the peak GPU memory Paddle allocated in MB ('gpu')."""
    done = subprocess.run([sys.executable, "-c", _PEAK_WRAPPER, *script_and_args], cwd=cwd,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {key: [line.split()[1] for line in done.stderr.splitlines()
                   if line.startswith(tag + " ")]
             for key, tag in (("rss", "PEAK_RSS_KB"), ("gpu", "PEAK_GPU_BYTES"))}
    if done.returncode != 0 or not peaks["rss"]:
        raise RuntimeError(f"{' '.join(script_and_args)} failed:\n{done.stderr[-2000:]}")
    result = {"rss": int(peaks["rss"][-1]) / 1024.0}
    if peaks["gpu"]:
        result["gpu"] = int(peaks["gpu"][-1]) / 1024.0 ** 2
    return result


def peak_rss_mb(script_and_args: List[str], cwd: str) -> float:
    """Run `python script args...` in a new process; its peak resident memory in MB."""
    return peak_memory_mb(script_and_args, cwd)["rss"]


def memory_runs(args, work: str, model_path: str, config: dict) -> Dict[str, Dict[str, float]]:
    """Peak RSS of train.py (one epoch) and of test.py on the generated memory categories (MB,
    under 'rss'), and on a GPU their peak GPU memory (under 'gpu')."""
    here = os.path.dirname(os.path.abspath(__file__))
    settings = ["-o", f"mvtec_img_size={args.img_size}", "-o", f"batch_size={args.batch_size}",
                "-o", f"device={args.device}",
                "-o", "pretrain=false", "-o", "seed=0", "-o", f"log_dir={work}/logs"]
    result = {"train": peak_memory_mb(
        ["train.py", "--config", "configs/demo.yaml", "--dataset_root",
         config["dataset_root"], "--normal_class", "bench", "-o", "num_epochs=0",
         "-o", f"save_dir={work}/memory_train", *settings], here)}
    for count in args.memory_images:
        good = max(1, count // 5)
        make_demo_category(f"{work}/memory", f"test{count}", size=args.img_size, num_train=1,
                           num_test_good=good, num_per_defect=(count - good) // 2, seed=count)
        result[f"test{count}"] = peak_memory_mb(
            ["test.py", "--model_path", model_path, "--dataset_root",
             f"{work}/memory", "--normal_class", f"test{count}", *settings], here)
    smallest = min(args.memory_images)
    result["test_batch2"] = peak_memory_mb(
        ["test.py", "--model_path", model_path, "--dataset_root", f"{work}/memory",
         "--normal_class", f"test{smallest}", *settings, "-o", "eval_batch_size=2"], here)
    return result


def deployment_runs(expert, cloner, config: dict, images: np.ndarray, work: str, gpu: bool,
                    repeats: int) -> dict:
    """Seconds to run all `images` through the exported gradient-map model in batches of 1 and
    8, by Paddle Inference and (when installed) ONNX Runtime, interleaved; plus the ONNX Runtime
    version, or what to install."""
    threads, size = cpu_thread_count(config), images.shape[-1]
    runners, result = {}, {"onnxruntime": None}
    with tempfile.TemporaryDirectory(dir=work) as folder:
        model_file = export_layer(AnomalyMapModel(expert, cloner, config["lamda"]),
                                  os.path.join(folder, "model"), [3, size, size])
        predictor = make_predictor(model_file, os.path.join(folder, "model.pdiparams"),
                                   use_gpu=gpu, cpu_threads=threads)
        runners["paddle"] = lambda batch: run_predictor(predictor, batch)
        try:
            require("paddle2onnx", "measuring ONNX Runtime")
            ort = import_optional("onnxruntime", "measuring ONNX Runtime")
        except UserError as error:  # a missing optional package: a row says what to install
            result["missing"], ort = str(error), None
        if ort:
            onnx_layer = AnomalyMapModel(expert, cloner, config["lamda"],
                                         max_pool_rule="switches")
            os.makedirs(os.path.join(folder, "onnx"))
            onnx_file = write_model(onnx_layer, os.path.join(folder, "onnx"), size, {})[0]
            cuda = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
            session = make_session(onnx_file, use_gpu=cuda, cpu_threads=threads)
            runners["onnxruntime"] = lambda batch: run_session(session, batch)
            result["onnxruntime"] = f"{ort.__version__} ({session.get_providers()[0]})"
        variants = {}
        for name, run in runners.items():
            for batch in DEPLOYMENT_BATCHES:
                run(images[:batch])  # oneDNN and ONNX Runtime prepare each new batch shape
                variants[f"{name}_batch{batch}"] = (
                    lambda run=run, batch=batch: by_batches(run, images, batch))
        result["times"] = interleaved(variants, repeats)
    return result


def main(argv=None) -> None:
    """Parse the options, measure everything, print (and write) the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img_size", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--num_train", type=int, default=40)
    parser.add_argument("--num_test_good", type=int, default=10)
    parser.add_argument("--num_per_defect", type=int, default=10,
                        help="defective test images per defect kind (2 kinds)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--naive_train_steps", type=int, default=1,
                        help="steps timed for the naive training (scaled to an epoch)")
    parser.add_argument("--smooth_grad_samples", type=int, default=8)
    parser.add_argument("--ig_steps", type=int, default=8)
    parser.add_argument("--memory_images", type=int, nargs="*", default=[50, 500],
                        help="test-set sizes for test.py's peak memory (none: skip)")
    parser.add_argument("--protocol_steps", type=int, default=10,
                        help="training steps timed per process at the protocols' sizes (32 px "
                             "and 128 px, batch 64; 128 px, batch 8) against the former "
                             "default; 0: skip, and on a GPU they are skipped")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "gpu"))
    parser.add_argument("--output", default=None, help="also write the tables to this file")
    args = parser.parse_args(argv)
    load_before = load_average()

    with tempfile.TemporaryDirectory(prefix="kdad-benchmark-") as work:
        root = os.path.join(work, "data")
        make_demo_category(root, "bench", size=args.img_size, num_train=args.num_train,
                           num_test_good=args.num_test_good, num_per_defect=args.num_per_defect)
        config = build_config(base=dict(
            dataset_name="folder", dataset_root=root, normal_class="bench",
            mvtec_img_size=args.img_size, batch_size=args.batch_size, pretrain=False, seed=0,
            num_epochs=0, eval_interval=1, save_dir=os.path.join(work, "output"),
            log_dir=os.path.join(work, "logs"), smooth_grad_samples=args.smooth_grad_samples,
            ig_steps=args.ig_steps, device=args.device), base_origin="the benchmark")
        device = setup_device(config)
        gpu = device == "gpu"
        shape = [3, args.img_size, args.img_size]
        rows = {}

        peaks = matmul_peak(cpu_thread_count(config), device)
        peak = max(peaks.values())
        started = time.perf_counter()
        trainer = Trainer(config)
        trainer.setup()
        rows["setup_cache"] = time.perf_counter() - started
        all_threads = None if gpu else Trainer({**config, "train_cpu_threads": 0})
        if all_threads is not None:  # CPU threads mean nothing to a GPU's training step
            all_threads.setup()
        compiled = Trainer({**config, "train_cpu_threads": 0})
        compiled.setup()
        compiled.step = compile_step(compiled.step)
        compiled.onednn = False  # the whole forward is one program here, with Paddle's kernels
        naive = NaiveTraining(trainer, config, args.naive_train_steps)
        steps_per_epoch = len(trainer.sampler)
        compiled.run_epoch(0)  # traces the program
        variants = {"train": lambda: trainer.run_epoch(0),
                    "train_all_threads": lambda: all_threads.run_epoch(0),
                    "train_compiled": lambda: compiled.run_epoch(0), "train_naive": naive}
        if all_threads is None:
            del variants["train_all_threads"]
        times = interleaved(variants, args.repeats)
        for name in ("train", "train_all_threads", "train_compiled"):
            if name in times:
                rows[name] = args.num_train / times[name]
        rows["train_naive"] = args.num_train / (times["train_naive"] * steps_per_epoch
                                                / args.naive_train_steps)
        del all_threads, compiled, naive
        memory_steps = {name: step_memory(work, config, name == "compiled")
                        for name in ("eager", "compiled")} if args.memory_images else {}
        paddle.base.core.set_num_threads(1)  # eager Paddle's default, for the naive variants

        expert, cloner = trainer.expert, trainer.cloner
        cloner.eval()
        test_loader = build_test_loader(config)
        defective = MVTecDataset([s for s in test_loader.dataset.samples if s.label == 1],
                                 args.img_size)
        defect_loader = build_loader(defective, args.batch_size)
        single_loader = build_loader(defective, 1)
        images = np.stack([defective[i][0] for i in range(len(defective))])
        masks = np.stack([defective[i][2] for i in range(len(defective))])
        batch = images[:args.batch_size]

        started = time.perf_counter()
        scorer = make_scorer(expert, cloner, config, device, shape)
        generators = {method: MapGenerator(expert, cloner, {**config, "localization_method":
                                                            method}, device, shape,
                                           args.batch_size) for method in METHODS}
        rows["setup_predictors"] = time.perf_counter() - started
        switched_gradient = PredictorRunner(  # the max-pool rule that converts to ONNX
            InputGradient(expert, cloner, config["lamda"], max_pool_rule="switches"), shape,
            use_gpu=gpu, cpu_threads=cpu_thread_count(config))
        raw_gradient = PredictorRunner(InputGradient(expert, cloner, config["lamda"]), shape,
                                       use_gpu=gpu, cpu_threads=cpu_thread_count(config))
        naive_expert = Expert()
        naive_expert.set_state_dict(expert.state_dict())
        for parameter in naive_expert.parameters():
            parameter.stop_gradient = False
        naive_model = ScoreModel(naive_expert, cloner, config["lamda"])
        naive_model.eval()
        eager_model = ScoreModel(expert, cloner, config["lamda"])
        eager_model.eval()

        def eager_forward_backward():
            x = paddle.to_tensor(batch)
            x.stop_gradient = False
            paddle.grad(eager_model(x).sum(), x)[0].numpy()

        evaluation = {}

        def localization():
            evaluation["result"] = evaluate(defect_loader, map_generator=generators["gradients"])

        naive_result = {}

        def naive_localization():
            naive_result["maps"] = naive_maps(naive_model, single_loader)

        variants = {
            "detect": lambda: evaluate(test_loader, scorer=scorer),
            "detect_naive": lambda: naive_scores(naive_model, test_loader),
            "loc": localization, "loc_naive": naive_localization,
            "batch_saliency": lambda: generators["gradients"](batch),
            "batch_raw_gradient": lambda: raw_gradient(batch),
            "batch_switched_gradient": lambda: switched_gradient(batch),
            "batch_eager_fwd_bwd": eager_forward_backward,
        }
        for method in ("gradients", "gbp", "feature_diff"):
            variants[method] = lambda method=method: by_batches(generators[method], images,
                                                                args.batch_size)
        for name in ("detect", "loc", "batch_saliency", "batch_raw_gradient",
                     "batch_switched_gradient", "gbp",
                     "feature_diff"):  # oneDNN builds its kernels for each new batch shape
            variants[name]()
        times.update(interleaved(variants, args.repeats))
        few = images[:2]
        for method in ("smooth_grad", "integrated_gradients"):  # slow: 2 images, timed once
            generators[method](images[:1])
            times[method] = _timed(lambda: generators[method](few)) * len(images) / len(few)
        maps = evaluation["result"].maps
        times["auc"] = statistics.median(_timed(lambda: loc_auc_paper(maps, masks))
                                         for _ in range(args.repeats))
        vectorised = evaluation["result"].loc_auc_paper()
        started = time.perf_counter()
        reference = reference_loc_auc(maps, masks)
        times["auc_reference"] = time.perf_counter() - started

        deployment = deployment_runs(expert, cloner, config, images, work, gpu, args.repeats)
        times.update(deployment.pop("times"))

        model_path = trainer.save_model(FINAL_MODEL, 0, {"selection": "benchmark"})
        peaks_by_run = memory_runs(args, work, model_path, config) if args.memory_images else {}
        memory = {run: peaks["rss"] for run, peaks in peaks_by_run.items()}
        gpu_memory = {run: peaks["gpu"] for run, peaks in peaks_by_run.items() if "gpu" in peaks}

    protocols = {}
    if args.protocol_steps and device == "cpu":
        cases = {f"{name}_{variant}": (size, batch, variant, name == "fashion_mnist")
                 for name, size, batch in (("fashion_mnist", 32, 64), ("batch64", 128, 64),
                                           ("batch8", 128, 8)) for variant in VARIANTS}
        cases[f"fashion_mnist_{ALL_CORES}"] = (32, 64, ALL_CORES, False)
        protocols = interleaved_rates(cases, args.repeats, args.protocol_steps)
    n_test, n_defect = len(test_loader.dataset), len(defective)
    flops = {"cloner": conv_flops(cloner, args.img_size), "expert": conv_flops(expert,
                                                                                 args.img_size),
             # the Fashion-MNIST protocol's 32 px, for its floor at the matmul peak
             "cloner_32": conv_flops(cloner, 32), "expert_32": conv_flops(expert, 32)}
    report = dict(args=args, rows=rows, times=times, peak=peak, peaks=peaks, flops=flops,
                  deployment=deployment, memory=memory, gpu_memory=gpu_memory,
                  memory_steps=memory_steps, device=device, protocols=protocols,
                  n_test=n_test, n_defect=n_defect, vectorised=vectorised, reference=reference,
                  load=(load_before, load_average()), steps_per_epoch=steps_per_epoch)
    text = format_report(report)
    print(text)
    if args.output:
        atomic_write_text(args.output, text + "\n")


def _ratio(slow: float, fast: float) -> str:
    return f"{slow / fast:.1f}x"


def memory_rows(memory: Dict[str, float], gpu_memory: Dict[str, float], device: str,
                anchor_cells: str) -> List[str]:
    """The peak-memory rows of the first table: host RSS and, on a GPU, the GPU memory Paddle
    allocated (MB in, GB out); none without measurements."""
    rows = []
    for label, values, anchors in (("peak memory (RSS)" if device == "cpu" else
                                    "peak host memory (RSS)", memory, anchor_cells),
                                   ("peak GPU memory (max_memory_allocated)", gpu_memory,
                                    "- | -")):
        if not values:
            continue
        tests = [key for key in values if key[4:].isdigit()]
        largest = max(values[key] for key in ["train", *tests]) / 1024
        rows.append(f"| {label}, GB | {largest:.2f} (train.py {values['train'] / 1024:.2f}; "
                    + ", ".join(f"test.py on {key[4:]} images {values[key] / 1024:.2f}"
                                for key in tests) + f") | - | - | {anchors} |")
    return rows


def training_rows(rows: Dict[str, float], device: str) -> List[str]:
    """The detail rows of the eager training step: by CPU threads on a CPU, one row on a GPU."""
    if device != "cpu":
        return [f"| training, eager on the GPU | {rows['train']:.1f} images/s |"]
    return [f"| training, default (oneDNN convolutions, max-pools' recorded arg-max, "
            f"`train_cpu_threads: 1`) | {rows['train']:.1f} images/s |",
            f"| training, all {usable_cores()} cores (`train_cpu_threads: 0`) | "
            f"{rows['train_all_threads']:.1f} images/s |"]


def deployment_rows(deployment: dict, t: dict, n: int) -> List[str]:
    """Paddle Inference and ONNX Runtime on the exported gradient-map model, or what to install."""
    def speeds(name):
        return ", ".join(f"batch {batch}: {n / t[f'{name}_batch{batch}']:.1f} images/s"
                         for batch in DEPLOYMENT_BATCHES)

    rows = [f"| deployment: Paddle Inference, exported gradient-map model (infer.py) | "
            f"{speeds('paddle')} |"]
    if deployment["onnxruntime"]:
        rows.append(f"| deployment: ONNX Runtime {deployment['onnxruntime']}, the same model "
                    f"as model.onnx | {speeds('onnxruntime')} |")
    else:
        rows.append(f"| deployment: ONNX Runtime | not measured: {deployment['missing']} |")
    return rows


def format_report(r: dict) -> str:
    """The Markdown tables."""
    args, t, rows, flops, peak = r["args"], r["times"], r["rows"], r["flops"], r["peak"]
    pt, port = ANCHORS["pytorch"], ANCHORS["paddle_port"]
    same_as_anchors = (args.img_size, args.batch_size, args.num_train, r["n_test"],
                       r["n_defect"]) == (128, 8, 40, 30, 20)
    anchor = (lambda value: value) if same_as_anchors else (lambda value: "-")
    loc = t["loc"]  # loading, maps and the vectorised AUC, as evaluate() runs them
    loc_naive = t["loc_naive"] + t["auc_reference"]
    epoch, epoch_naive = args.num_train / rows["train"], args.num_train / rows["train_naive"]
    pipeline, pipeline_naive = epoch + t["detect"] + loc, epoch_naive + t["detect_naive"] + loc_naive
    lines = [
        f"Generated data: {args.num_train} training, {r['n_test']} test ({r['n_defect']} "
        f"defective) images, {args.img_size} px, batch {args.batch_size}, random expert; "
        f"device {r['device']}, {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Paddle {paddle.__version__}; load average {r['load'][0]} (start), {r['load'][1]} (end). "
        f"Medians of {args.repeats} interleaved repeats.",
        "",
        "| phase | this code | naive variants (same run) | speed-up | PyTorch original* "
        "| earlier Paddle port* |",
        "|---|---|---|---|---|---|",
        f"| training, images/s | {rows['train']:.1f} | {rows['train_naive']:.2f} | "
        f"{_ratio(rows['train'], rows['train_naive'])} | {anchor(pt['train'])} | "
        f"{anchor(port['train'])} |",
        f"| detection, {r['n_test']} images, s | {t['detect']:.2f} | {t['detect_naive']:.2f} | "
        f"{_ratio(t['detect_naive'], t['detect'])} | {anchor(pt['detect'])} | "
        f"{anchor(port['detect'])} |",
        f"| gradient localization, {r['n_defect']} images, s | {loc:.2f} | {loc_naive:.2f} | "
        f"{_ratio(loc_naive, loc)} | {anchor(pt['loc'])} | {anchor(port['loc'])} |",
        f"| - of which the paper's AUC sweep, s | {t['auc']:.3f} | {t['auc_reference']:.2f} | "
        f"{_ratio(t['auc_reference'], t['auc'])} | {anchor(pt['auc'])} | - |",
        f"| pipeline: epoch + detection + localization, s | {pipeline:.2f} | "
        f"{pipeline_naive:.1f} | {_ratio(pipeline_naive, pipeline)} | "
        f"{anchor(round(args.num_train / pt['train'] + pt['detect'] + pt['loc'], 1))} | "
        f"{anchor(round(args.num_train / port['train'] + port['detect'] + port['loc'], 1))} |",
    ]
    lines += memory_rows(r["memory"], r.get("gpu_memory", {}), r["device"],
                         f"{anchor(pt['memory'])} | {anchor(port['memory'])}")
    lines += [
        "",
        "Naive variants: training eager, the expert recomputed every step with gradients for its "
        f"weights (timed over {args.naive_train_steps} of {r['steps_per_epoch']} steps, scaled to "
        "the epoch); detection eager with autograd recording; localization one image at a time "
        "with paddle.grad, eager, and the reference 1000-threshold AUC loop "
        f"(AUC {r['reference']:.6f}; the vectorised sweep gives {r['vectorised']:.6f}). "
        "*Anchors were measured elsewhere on a 2-core machine with the same image counts; they "
        "are shown only for the default sizes.",
        "",
        "| detail | value |",
        "|---|---|",
        *training_rows(rows, r["device"]),
        f"| training, the whole forward compiled with paddle.jit.to_static"
        + (", all cores" if r["device"] == "cpu" else "")
        + f" | {rows['train_compiled']:.1f} images/s"
        + (f"; peak RSS of 12 steps {r['memory_steps']['compiled']:.0f} MB vs. "
           f"{r['memory_steps']['eager']:.0f} MB eager" if r["memory_steps"] else "") + " |",
        f"| one-time: expert outputs cached | {rows['setup_cache']:.1f} s |",
        f"| one-time: export and build of the evaluation predictors | "
        f"{rows['setup_predictors']:.1f} s (detection + {len(METHODS)} map methods) |",
    ]
    n = r["n_defect"]
    notes = {"smooth_grad": f" ({args.smooth_grad_samples} noisy copies instead of 50; timed "
                            "on 2 images)",
             "integrated_gradients": f" ({args.ig_steps} steps instead of 100; timed on 2 "
                                     "images)"}
    for method in METHODS:
        lines.append(f"| saliency `{method}`, batches of {args.batch_size} | "
                     f"{n / t[method]:.1f} images/s{notes.get(method, '')} |")
    lines += [
        f"| saliency of a batch of {args.batch_size} vs. a forward+backward of that batch | "
        f"{t['batch_saliency'] / t['batch_eager_fwd_bwd']:.2f}x eager autograd "
        f"({t['batch_eager_fwd_bwd']:.2f} s), {t['batch_saliency'] / t['batch_raw_gradient']:.2f}x "
        f"the bare hand-written backward in Paddle Inference ({t['batch_raw_gradient']:.2f} s) |",
        f"| that backward with max-pool's ONNX-convertible rule (switches) instead of "
        f"max_unpool2d, Paddle Inference | {t['batch_switched_gradient']:.2f} s vs. "
        f"{t['batch_raw_gradient']:.2f} s a batch of {args.batch_size} |",
    ]
    lines += deployment_rows(r["deployment"], t, n)
    train_step = 3 * flops["cloner"] * args.batch_size
    evaluation = flops["cloner"] + flops["expert"]
    achieved = [("training step (cloner forward + backward)", train_step,
                 t["train"] / r["steps_per_epoch"]),
                (f"detection pass ({r['n_test']} images, both networks)",
                 evaluation * r["n_test"], t["detect"]),
                (f"gradient maps ({n} images, forward + input backward)", 2 * evaluation * n,
                 t["gradients"])]
    lines += [f"| FLOPs: {name} | {flop / 1e9:.1f} GFLOP, {flop / seconds / 1e9:.1f} GFLOP/s = "
              f"{flop / seconds / peak:.0%} of peak |" for name, flop, seconds in achieved]
    if "cublas" in r["peaks"]:
        lines.append(f"| peak: float32 matmul 4096x4096 (cuBLAS) | {peak / 1e9:.0f} GFLOP/s |")
    else:
        lines.append(f"| peak: float32 matmul 4096x4096, the faster of NumPy "
                     f"({r['peaks']['numpy'] / 1e9:.0f}) and Paddle Inference/oneDNN "
                     f"({r['peaks']['onednn'] / 1e9:.0f}) | {peak / 1e9:.0f} GFLOP/s |")
    if r["memory"]:
        tests = sorted((key for key in r["memory"] if key[4:].isdigit()),
                       key=lambda key: int(key[4:]))
        lines.append("| test.py peak RSS by test-set size (eval batch "
                     f"{args.batch_size}) | " + ", ".join(
                         f"{key[4:]} images: {r['memory'][key]:.0f} MB" for key in tests)
                     + f"; with `-o eval_batch_size=2`: {r['memory']['test_batch2']:.0f} MB |")
    return "\n".join(lines + protocol_rows(r["protocols"], r["args"], r["peak"], r["flops"]))


def protocol_rows(rates: dict, args, peak: float, flops: dict) -> List[str]:
    """The Fashion-MNIST class and the paper's MVTec batch, this code against the former
    default, each in its own process (utils/training_speed.py); and the class's floor at this
    machine's matmul peak."""
    if not rates:
        return []
    floor = fashion_mnist_peak_minutes(peak, flops["cloner_32"], flops["expert_32"])
    fm_new, fm_old = rates["fashion_mnist_default"], rates["fashion_mnist_former"]
    minutes = {variant: fashion_mnist_minutes(rates[f"fashion_mnist_{variant}"])
               for variant in VARIANTS}
    lines = [
        "",
        "| the protocols' training (random images, one process per measurement) | this code "
        "| former default | speed-up |",
        "|---|---|---|---|",
        f"| one Fashion-MNIST class (6,000 training + 10,000 test images, 32 px, epochs 0..51, "
        f"batch 64, test every 10 epochs), estimated minutes | {minutes['default']:.1f} | "
        f"{minutes['former']:.1f} | {_ratio(minutes['former'], minutes['default'])} |",
        f"| - the same if every convolution FLOP ran at this machine's matmul peak, minutes | "
        f"{floor:.1f} | - | - |",
        f"| - training at 32 px, batch 64, images/s | {fm_new['train']:.0f} | "
        f"{fm_old['train']:.0f} | {_ratio(fm_new['train'], fm_old['train'])} |",
    ]
    cores = rates.get(f"fashion_mnist_{ALL_CORES}")
    if cores:
        lines.append(f"| - the same on all {usable_cores()} cores (`train_cpu_threads: 0`), "
                     f"images/s | {cores['train']:.0f} | - | against one thread: "
                     f"{_ratio(cores['train'], fm_new['train'])} |")
    lines += [
        f"| - scoring at 32 px (the cloner in eval mode), images/s | {fm_new['score']:.0f} | "
        f"{fm_old['score']:.0f} | {_ratio(fm_new['score'], fm_old['score'])} |",
        f"| - the expert's outputs at 32 px (Paddle Inference), images/s | "
        f"{fm_new['expert']:.0f} | {fm_old['expert']:.0f} | "
        f"{_ratio(fm_new['expert'], fm_old['expert'])} |",
    ]
    for batch in (64, 8):
        new, old = rates[f"batch{batch}_default"]["train"], rates[f"batch{batch}_former"]["train"]
        lines.append(f"| training at 128 px, batch {batch}, images/s | {new:.1f} | {old:.1f} | "
                     f"{_ratio(new, old)} |")
    ratio = {variant: rates[f"batch64_{variant}"]["train"] / rates[f"batch8_{variant}"]["train"]
             for variant in VARIANTS}
    lines += [
        f"| 128 px: images/s at batch 64 / images/s at batch 8 | {ratio['default']:.2f} | "
        f"{ratio['former']:.2f} | - |",
        "",
        f"This code: {VARIANTS['default']}; former default: {VARIANTS['former']}. Medians of "
        f"{args.repeats} runs of {args.protocol_steps} steps (after one untimed step) per process, "
        "one CPU thread for training unless a row says otherwise (`train_cpu_threads: 1`) and "
        "all cores for the expert. The "
        "class estimate adds the expert's outputs of all 16,000 images, 52 epochs and the "
        "scoring of the test set at 6 evaluations and of the training set for 7 saved models.",
    ]
    return lines


if __name__ == "__main__":
    main()
