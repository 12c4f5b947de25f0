"""Data-parallel training on CPU (gloo): two processes against one that averages two half-batches;
two launchers over loopback (two nodes) against one; a failure on rank 0 alone stops both.

Without SyncBatchNorm every process normalises its half of the global batch with that half's own
statistics, and DataParallel averages the two gradients. One process can compute exactly that:
run each half separately, add half of each gradient, step; keep the BatchNorm running statistics
of the first half only, as rank 0 (which saves the model) does.
"""
import importlib.util
import os
import socket
import subprocess
import sys
from typing import Sequence

import numpy as np
import pytest

from conftest import ROOT, make_config
from max_pool_grad import recorded_max_pools
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
VISUALDL = importlib.util.find_spec("visualdl") is not None  # then the run logs to VisualDL too


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
    command += ["--use_vdl"] if VISUALDL else []
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
        with onednn_convolutions(cloner, trainer.onednn), \
                recorded_max_pools(cloner, trainer.onednn):  # as the training runs them
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_only_rank_zero_writes(two_process_run):
    config, model_dir = two_process_run["config"], two_process_run["model_dir"]
    assert sorted(os.listdir(config["log_dir"])) == ["demo_train.log"]
    log = open(os.path.join(config["log_dir"], "demo_train.log")).read()
    assert "2 process(es)" in log
    assert log.count("training and") == 1  # one process logged
    assert log.count("epoch [1/1] loss") == 1 and log.count("image ROC-AUC") == EPOCHS
    assert {"final_model.pdparams", "last.pdckpt", "expert.pdparams"} <= set(os.listdir(model_dir))
    assert not [name for name in os.listdir(model_dir) if name.endswith(".tmp")]


def launch_command(work, root: str, processes: int = 2, launcher: Sequence[str] = (),
                   logs: str = None, **settings) -> list:
    """`paddle.distributed.launch --nproc_per_node <processes> <launcher> train.py` on the
    category at `root`, with SETTINGS and `settings` as overrides, writing under `work`."""
    command = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node",
               str(processes), *launcher, "--log_dir", logs or os.path.join(str(work), "launch"),
               "train.py", "--config", "configs/demo.yaml", "--dataset_root", root,
               "--normal_class", "demo", "-o", f"save_dir={work}/out", "-o", f"log_dir={work}/logs"]
    for key, value in {**SETTINGS, **settings}.items():
        command += ["-o", f"{key}={'null' if value is None else value}"]
    return command


def worker_logs(folder: str) -> dict:
    """{rank on this launcher: its log} of a launcher's --log_dir."""
    return {int(name.rsplit(".", 1)[1]): open(os.path.join(folder, name)).read()
            for name in os.listdir(folder) if name.startswith("workerlog.")}


def launch(work, root: str, **settings):
    """Run launch_command(...) to its end: (completed process, {rank: its log})."""
    done = subprocess.run(launch_command(work, root, **settings), cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    return done, worker_logs(os.path.join(str(work), "launch"))


def last_line(log: str) -> str:
    return log.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["setup", "epoch"])
def test_a_failure_on_rank_zero_alone_stops_both_with_its_message(tmp_path, where):
    """Only rank 0 reads the test images and saves: its failure there (an unreadable test image
    while the caches are built; a model file it cannot write after the first epoch) must not
    leave rank 1 waiting in the next collective call. Both stop with rank 0's one-line error."""
    root = str(tmp_path / "data")
    make_demo_category(root, "demo", size=SIZE, num_train=16, num_test_good=4, num_per_defect=2,
                       seed=3)
    if where == "setup":
        broken = os.path.join(root, "demo", "test", "good", "000.png")
        with open(broken, "wb") as stream:
            stream.write(b"\x89PNG\r\n\x1a\n truncated")
        culprit = broken
    else:  # best_model.pdparams cannot be written: a folder is in its place
        culprit = os.path.join(str(tmp_path), "out", "demo", "best_model.pdparams")
        os.makedirs(culprit)
    done, logs = launch(tmp_path, root, seed=0)
    assert done.returncode != 0
    assert sorted(logs) == [0, 1]
    lines = [last_line(logs[rank]) for rank in (0, 1)]
    assert lines[0] == lines[1], logs[1][-3000:]
    assert lines[0].startswith("error: ") and culprit in lines[0]
    if where == "epoch":
        assert "epoch [0/1] loss" in open(tmp_path / "logs" / "demo_train.log").read()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_launchers_on_loopback_train_what_one_launcher_with_two_processes_does(
        two_process_run, tmp_path):
    """Two machines, one process each (here two launchers over loopback, as two nodes would
    run them): `--nnodes 2 --master IP:PORT --rank R`. Same seed, same data: the same weights
    as one launcher running two processes, and one model written, by global rank 0."""
    root, seed = str(two_process_run["work"] / "data"), two_process_run["config"]["seed"]
    master = f"127.0.0.1:{free_port()}"
    nodes = [subprocess.Popen(launch_command(
        tmp_path, root, processes=1, logs=str(tmp_path / f"node{rank}"), seed=seed,
        launcher=["--nnodes", "2", "--master", master, "--rank", str(rank)]),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for rank, node in enumerate(nodes):
        logs = worker_logs(str(tmp_path / f"node{rank}"))
        assert node.returncode == 0, outputs[rank][-2000:] + str(logs)[-3000:]
    model_dir = tmp_path / "out" / "demo"
    saved = read_state_dict(find_weights(str(model_dir), FINAL_MODEL))
    expected = read_state_dict(find_weights(two_process_run["model_dir"], FINAL_MODEL))
    assert sorted(saved) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    log = open(tmp_path / "logs" / "demo_train.log").read()
    assert "2 process(es)" in log and log.count("training and") == 1


@pytest.mark.skipif(not VISUALDL, reason="visualdl is not installed (requirements-extras.txt)")
def test_only_rank_zero_logs_to_visualdl(two_process_run):
    from visualdl import LogReader
    from utils.visualdl_log import LOSS_TAG, RECORD_FILE, ROC_TAG, VDL_FOLDER
    folder = os.path.join(two_process_run["model_dir"], VDL_FOLDER)
    assert os.listdir(folder) == [RECORD_FILE]
    log = LogReader(file_path=os.path.join(folder, RECORD_FILE))
    assert [record.id for record in log.get_data("scalar", LOSS_TAG)] == list(range(EPOCHS))
    assert [record.id for record in log.get_data("roc_curve", ROC_TAG)] == [EPOCHS - 1]
