"""Data-parallel training on CPU (gloo): two processes against one that averages two half-batches.

Without SyncBatchNorm every process normalises its half of the global batch with that half's own
statistics, and DataParallel averages the two gradients. One process can compute exactly that:
run each half separately, add half of each gradient, step; keep the BatchNorm running statistics
of the first half only, as rank 0 (which saves the model) does.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_config
from onednn_conv import onednn_convolutions
from train import FINAL_MODEL, Trainer
from utils.checkpoint import find_weights, read_state_dict
from utils.config import load_saved_config
from utils.demo_data import make_demo_category
from utils.seed import epoch_order_seed

SIZE, BATCH, EPOCHS = 32, 8, 2  # 16 training images: 2 steps of 8 per epoch, epochs 0..1 = 4 steps
# seed null: each process draws its own, and rank 0's must win (it is saved in config.yaml)
SETTINGS = dict(mvtec_img_size=SIZE, batch_size=BATCH, num_epochs=EPOCHS - 1, eval_interval=1,
                seed=None, cpu_threads=1)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Data, and the output of `paddle.distributed.launch --nproc_per_node 2 train.py`."""
    work = tmp_path_factory.mktemp("distributed")
    root = str(work / "data")
    make_demo_category(root, "demo", size=SIZE, num_train=16, num_test_good=4, num_per_defect=2,
                       seed=3)
    config = make_config(root, None, save_dir=str(work / "out"), log_dir=str(work / "logs"),
                         **SETTINGS)
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2",
               "--log_dir", str(work / "launch"), "train.py", "--config", "configs/demo.yaml",
               "--dataset_root", root, "--normal_class", "demo"]
    for key in ("save_dir", "log_dir", *SETTINGS):
        command += ["-o", f"{key}={'null' if config[key] is None else config[key]}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    logs = "".join(open(os.path.join(work / "launch", name)).read()
                   for name in sorted(os.listdir(work / "launch")) if name.startswith("workerlog"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs[-3000:]
    model_dir = os.path.join(config["save_dir"], "demo")
    seed = load_saved_config(os.path.join(model_dir, "config.yaml"))["seed"]
    return {"config": {**config, "seed": seed}, "work": work, "model_dir": model_dir}


def half_batch_reference(config: dict) -> dict:
    """One process: per global batch, each half's loss with its own BatchNorm statistics,
    gradients averaged, one Adam step; running statistics of the first half kept."""
    trainer = Trainer(config)
    trainer.setup()
    cloner, optimizer = trainer.cloner, trainer.optimizer
    for epoch in range(EPOCHS):
        trainer.step.train()
        trainer.sampler.set_epoch(epoch_order_seed(config["seed"], epoch))
        with onednn_convolutions(cloner, trainer.onednn):  # as the training runs its convs
            for indices in trainer.sampler:
                half = len(indices) // 2
                for part, chosen in enumerate((indices[:half], indices[half:])):
                    statistics = {name: value.numpy().copy()
                                  for name, value in cloner.state_dict().items()
                                  if name.endswith(("._mean", "._variance"))}
                    images, expert_stages = trainer.train_cache.batch(chosen)
                    (trainer.step(images, expert_stages) * 0.5).backward()
                    if part == 1:  # rank 1's running statistics never reach rank 0's model
                        cloner.set_state_dict(statistics)
                optimizer.step()
                optimizer.clear_grad()
    return {name: value.numpy() for name, value in cloner.state_dict().items()}


def max_relative_difference(saved: dict, reference: dict) -> float:
    return max(float(np.abs(saved[name] - value).max() / (np.abs(value).max() + 1e-12))
               for name, value in reference.items())


def test_two_processes_equal_one_averaging_two_half_batches(two_process_run, tmp_path):
    config = {**two_process_run["config"], "save_dir": str(tmp_path / "reference"),
              "log_dir": str(tmp_path / "logs")}
    saved = read_state_dict(find_weights(two_process_run["model_dir"], FINAL_MODEL))
    reference = half_batch_reference(config)
    assert sorted(saved) == sorted(reference)
    for name, value in reference.items():
        np.testing.assert_allclose(saved[name], value, rtol=2e-4, atol=2e-5, err_msg=name)
    # and that is not what one process with the whole batch computes (BatchNorm statistics)
    whole = Trainer(config)
    whole.setup()
    for epoch in range(EPOCHS):
        whole.run_epoch(epoch)
    full_batch = {name: value.numpy() for name, value in whole.cloner.state_dict().items()}
    assert max_relative_difference(saved, full_batch) > 1e-3


def test_only_rank_zero_writes(two_process_run):
    config, model_dir = two_process_run["config"], two_process_run["model_dir"]
    assert sorted(os.listdir(config["log_dir"])) == ["demo_train.log"]
    log = open(os.path.join(config["log_dir"], "demo_train.log")).read()
    assert "2 process(es)" in log
    assert log.count("training and") == 1  # one process logged
    assert log.count("epoch [1/1] loss") == 1 and log.count("image ROC-AUC") == EPOCHS
    assert {"final_model.pdparams", "last.pdckpt", "expert.pdparams"} <= set(os.listdir(model_dir))
    assert not [name for name in os.listdir(model_dir) if name.endswith(".tmp")]
