"""Train KDAD's cloner on one category.

    python train.py --config configs/config.yaml --dataset_root Dataset/MVTec --normal_class bottle

Writes <save_dir>/<class>/: final_model.pdparams (the honest default), best_model.pdparams (best
test-set detection ROC-AUC, an optimistic selection), their .json (threshold, epoch), last.pdckpt
(resumable), config.yaml, history.json; and the log <log_dir>/<class>_train.log. With
`weights_format: safetensors` the weights are .safetensors files instead (no pickles). With
`use_visualdl: true` (or --use_vdl) VisualDL logs go to <save_dir>/<class>/vdl/.
Several GPUs: python -m paddle.distributed.launch --gpus 0,1 train.py ...
Several CPU processes: python -m paddle.distributed.launch --nproc_per_node 2 train.py ...
"""
import argparse
import contextlib
import json
import math
import os
import sys
import time

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
import numpy as np
import paddle
from tqdm import tqdm

from dataloader import build_dataset, eval_batch_size, input_size
from engine import make_runner
from expert_cache import ExpertCache
from loss_functions import build_loss
from max_pool_grad import recorded_max_pools
from metrics import image_auroc
from network import build_cloner
from onednn_conv import OnednnStages, onednn_available, onednn_convolutions
from test_functions import image_threshold, score_cached
from train_step import build_grad_scaler, build_training_step
from utils.checkpoint import (find_weights, load_model_info, load_state_strict,
                              load_training_state, save_model, save_state_dict,
                              save_training_state, weights_digest, weights_path)
from utils.config import WEIGHTS_FORMATS, add_config_args, config_from_args, save_config
from utils.device import setup_device, use_training_threads
from utils.distributed import (broadcast_seed, broadcast_weights, mean_over_ranks,
                               rank_zero_value, rank_zero_work)
from utils.errors import UserError, report_user_errors, stop_exit, stop_word
from utils.files import finish_commits
from utils.folder_lock import folder_lock
from utils.logger import get_logger
from utils.optimizer_state import portable_optimizer_state, restore_optimizer_state
from utils.seed import epoch_order_seed, resolve_seed, seed_everything
from utils.visualdl_log import VDL_FOLDER, TrainingLog, check_visualdl
from vgg import (EXPERT_STEM, build_expert, check_expert, drop_unneeded_experts,
                 expert_fingerprint, set_aside_expert)

# weights files are <stem>.pdparams or <stem>.safetensors (`weights_format`)
FINAL_MODEL, BEST_MODEL, LAST_STATE = "final_model", "best_model", "last.pdckpt"


class Diverged(UserError):
    """The loss, the weights or the scores stopped being finite numbers."""


def model_dir_of(config: dict) -> str:
    return os.path.join(config["save_dir"], str(config["normal_class"]))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Train KDAD's cloner on one category.")
    add_config_args(parser)
    parser.add_argument("--save_dir", default=None,
                        help="the models go to <save_dir>/<normal_class>/ (same as -o save_dir=...; "
                             "default: the config's save_dir, output)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from <save_dir>/<class>/last.pdckpt (same as "
                             "continue_train: true)")
    parser.add_argument("--use_vdl", action="store_true",
                        help="log to VisualDL in <save_dir>/<class>/vdl/ (same as -o "
                             "use_visualdl=true)")
    args = parser.parse_args(argv)
    if args.save_dir is not None:  # an explicit -o save_dir=... still wins
        args.override.insert(0, f"save_dir={args.save_dir}")
    if args.use_vdl:
        args.override.append("use_visualdl=true")
    return args


def resolve_config(args):
    """The run's config and, when resuming, the saved training state."""
    config = config_from_args(args)
    if not (args.resume or config["continue_train"]):
        return resolve_seed(config), None
    state = load_training_state(os.path.join(model_dir_of(config), LAST_STATE))
    config = config_from_args(args, base=state["config"])
    if config["seed"] is None:  # a config file's `seed: null` means the seed this run drew
        config = {**config, "seed": state["config"]["seed"]}
    return config, state


def _numpy_tree(value):
    """A detached NumPy copy of a (nested) state dict, safe to keep while training goes on."""
    if isinstance(value, dict):
        return {key: _numpy_tree(item) for key, item in value.items()}
    if isinstance(value, list):  # the history's lists keep growing after this epoch
        return [_numpy_tree(item) for item in value]
    if isinstance(value, paddle.Tensor):
        return value.numpy().copy()
    return value


class Trainer:
    def __init__(self, config: dict, state: dict = None):
        check_visualdl(config)
        self.config, self.state = config, state
        self.vdl = TrainingLog(None)  # fit() opens the log
        self.world, self.rank = paddle.distributed.get_world_size(), paddle.distributed.get_rank()
        self.main = self.rank == 0
        self.device = setup_device(config)
        if self.world > 1:
            paddle.distributed.init_parallel_env()
            if config["batch_size"] % self.world:
                raise UserError(f"batch_size {config['batch_size']} must be divisible by the "
                                f"{self.world} processes (the global batch is kept)")
            self.config = config = {**config, "seed": broadcast_seed(config["seed"])}
        self.model_dir = model_dir_of(config)
        log_file = os.path.join(config["log_dir"], f"{config['normal_class']}_train.log")
        self.log = get_logger("train", log_file if self.main else None)
        if not self.main:
            self.log.disabled = True
        seed_everything(config["seed"])

    def setup(self) -> None:
        config, size = self.config, input_size(self.config)
        started = time.time()
        train_set, test_set = build_dataset(config, "train"), build_dataset(config, "test")
        resumed = self.state is not None
        self.expert = build_expert(config, self.model_dir if resumed else None,
                                   self.state.get("expert_fingerprint") if resumed else None)
        if self.world > 1:  # every rank must build the same expert outputs
            broadcast_weights(self.expert)
        self.expert_fingerprint = expert_fingerprint(self.expert)
        if resumed:
            check_expert(self.expert, self.state.get("expert_fingerprint"),
                         os.path.join(self.model_dir, LAST_STATE))
        self.cloner = build_cloner(config)
        if resumed:
            load_state_strict(self.cloner, self.state["cloner"], LAST_STATE)
        with rank_zero_work():  # a failure here stops every process, with the same message
            if self.main and config["expert_cache"] == "disk":  # the cache's files go there
                os.makedirs(self.model_dir, exist_ok=True)
        expert_runner = make_runner(self.expert, config, self.device, [3, size, size])
        cache_args = dict(expert_runner=expert_runner, batch_size=eval_batch_size(config),
                          storage=config["expert_cache"], folder=self.model_dir,
                          num_workers=config["num_workers"])
        self.train_cache = ExpertCache(train_set, **cache_args)
        with rank_zero_work():
            self.test_cache = ExpertCache(test_set, **cache_args) if self.main else None
            if self.main:  # only now that every image was read: bad data leaves no file behind
                save_config(config, os.path.join(self.model_dir, "config.yaml"))
                if not config["pretrain"] and not resumed:
                    set_aside_expert(self.model_dir, self.expert_fingerprint,
                                     self.experts_needed())
                    self.save_weights(self.expert, EXPERT_STEM)
        self.test_normalization = getattr(test_set, "normalization", None)  # to show images
        self.log.info(f"{len(train_set)} training and {len(test_set)} test images of "
                      f"'{config['normal_class']}' at {size} px; device {self.device}, "
                      f"{self.world} process(es); expert outputs ready in "
                      f"{time.time() - started:.1f} s")

        self.criterion = build_loss(config)
        if self.world > 1 and config["sync_bn"]:
            if self.device != "gpu":
                raise UserError("sync_bn: true needs GPUs (Paddle's SyncBatchNorm has no CPU "
                                "kernel); on CPU each process normalises its own part of the batch")
            self.cloner = paddle.nn.SyncBatchNorm.convert_sync_batchnorm(self.cloner)
        self.step = build_training_step(self.cloner, self.criterion, config, self.world)
        # on a CPU the cloner's convolutions run through oneDNN and its max-pools record their
        # arg-max for a faster backward (engine: eager keeps Paddle's own kernels for both)
        self.onednn = self.device == "cpu" and config["engine"] != "eager"
        self.onednn_stages = None  # the scoring program, built when first needed
        self.optimizer = paddle.optimizer.Adam(learning_rate=config["learning_rate"],
                                               parameters=self.cloner.parameters())
        self.scaler = build_grad_scaler(config, self.device)
        self.sampler = paddle.io.DistributedBatchSampler(
            self.train_cache, batch_size=config["batch_size"] // self.world, shuffle=True)
        if resumed:
            restore_optimizer_state(self.optimizer, self.cloner, self.state["optimizer"],
                                    LAST_STATE)
            if self.scaler is not None and self.state.get("scaler"):
                self.scaler.load_state_dict(self.state["scaler"])  # the loss scale goes on
            elif self.scaler is not None:
                self.log.info(f"note: {LAST_STATE} holds no loss scale (trained without amp); "
                              "the loss scaler starts afresh")
            self.history, self.best = self.state["history"], self.state["best"]
            self.start_epoch = self.state["epoch"] + 1
            self.log.info(f"resumed from {os.path.join(self.model_dir, LAST_STATE)} after "
                          f"epoch {self.state['epoch']}")
        else:
            self.history = {"epoch": [], "loss": [], "eval_epoch": [], "image_auroc": []}
            self.best = {"image_auroc": -math.inf, "epoch": None}
            self.start_epoch = 0
        self.saved_epoch = self.start_epoch - 1 if resumed else None  # the epoch in LAST_STATE

    def run_epoch(self, epoch: int) -> float:
        """One pass over the training set; returns the sum of the batch losses (as the
        reference code prints). The loss stays on the device: one host sync per epoch."""
        self.step.train()
        use_training_threads(self.config, self.device, self.world)
        self.sampler.set_epoch(epoch_order_seed(self.config["seed"], epoch))
        loss_sum = paddle.zeros([], dtype="float32")
        with onednn_convolutions(self.cloner, self.onednn), \
                recorded_max_pools(self.cloner, self.onednn):
            for images, expert_stages in self.train_cache.epoch(self.sampler):
                loss = self.step(images, expert_stages)
                if self.scaler is None:
                    loss.backward()
                    self.optimizer.step()
                else:
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                self.optimizer.clear_grad()
                loss_sum = loss_sum + loss.detach()
        if self.world > 1:  # each rank's loss is that of its part of the global batch
            loss_sum = mean_over_ranks(loss_sum)
        return float(loss_sum)

    def scores(self, cache: ExpertCache) -> np.ndarray:
        """The cloner's anomaly scores of every image of `cache` (on a CPU the whole cloner
        through oneDNN)."""
        if self.onednn and onednn_available() and self.onednn_stages is None:
            self.onednn_stages = OnednnStages(self.cloner)
        return score_cached(self.cloner, cache, self.config, self.onednn_stages)

    def evaluate(self, epoch: int) -> None:
        scores = self.scores(self.test_cache)
        if not np.isfinite(scores).all():
            raise Diverged(f"the test scores became NaN or infinite in epoch {epoch}")
        auroc = image_auroc(self.test_cache.labels, scores)
        self.history["eval_epoch"].append(epoch)
        self.history["image_auroc"].append(auroc)
        self.vdl.evaluation(epoch, auroc)
        improved = auroc > self.best["image_auroc"]
        if improved:
            self.best = {"image_auroc": auroc, "epoch": epoch}
            self.save_model(BEST_MODEL, epoch, {"image_auroc": auroc,
                                                "selection": "best test-set image ROC-AUC"})
        self.log.info(f"epoch {epoch}: image ROC-AUC {auroc:.4f} (best {self.best['image_auroc']:.4f}"
                      f" at epoch {self.best['epoch']})" + (", saved best_model" if improved else ""))

    def save_weights(self, layer: paddle.nn.Layer, stem: str) -> str:
        """Write `layer`'s weights as <stem>.<weights_format>; a same-named file in the other
        format, left by an earlier run, is removed so that it cannot be loaded by mistake."""
        path = weights_path(self.model_dir, stem, self.config["weights_format"])
        save_state_dict(layer.state_dict(), path)
        for other in set(WEIGHTS_FORMATS) - {self.config["weights_format"]}:
            if os.path.isfile(weights_path(self.model_dir, stem, other)):
                os.remove(weights_path(self.model_dir, stem, other))
        return path

    def save_model(self, name: str, epoch: int, extra: dict) -> str:
        """The cloner as <name>.<weights_format> and its .json (threshold, epoch, expert
        fingerprint, config), saved as one; its path."""
        threshold = image_threshold(self.scores(self.train_cache))
        info = {"epoch": epoch, **extra, "expert_fingerprint": self.expert_fingerprint,
                **threshold, "config": self.config}
        path = weights_path(self.model_dir, name, self.config["weights_format"])
        save_model(path, self.cloner.state_dict(), info)
        return path

    def final_model_saved(self) -> bool:
        """Whether final_model holds the cloner as it is now; a run stopped after its last
        checkpoint but before final_model was saved has not."""
        path = find_weights(self.model_dir, FINAL_MODEL, self.config["weights_format"])
        recorded = load_model_info(path).get("weights_digest") if os.path.isfile(path) else None
        return recorded == weights_digest(_numpy_tree(self.cloner.state_dict()))

    def experts_needed(self) -> list:
        """The fingerprints of the experts that the checkpoints in the model folder recorded
        (unreadable ones need none)."""
        last = os.path.join(self.model_dir, LAST_STATE)
        readers = [lambda stem=stem: load_model_info(find_weights(self.model_dir, stem))
                   for stem in (FINAL_MODEL, BEST_MODEL)]
        readers.append(lambda: load_training_state(last) if os.path.isfile(last) else {})
        found = []
        for read in readers:
            try:
                found.append(read().get("expert_fingerprint"))
            except UserError:
                pass
        return [fingerprint for fingerprint in found if fingerprint]

    def training_state(self, epoch: int) -> dict:
        return _numpy_tree({"cloner": self.cloner.state_dict(),
                            "optimizer": portable_optimizer_state(self.optimizer, self.cloner),
                            "epoch": epoch,
                            "history": self.history, "best": self.best, "config": self.config,
                            "expert_fingerprint": self.expert_fingerprint,
                            **({"scaler": self.scaler.state_dict()} if self.scaler else {})})

    def save_state(self, state: dict) -> None:
        """last.pdckpt and history.json, saved as one."""
        save_training_state(os.path.join(self.model_dir, LAST_STATE), state, beside={
            "history.json": json.dumps(state["history"], indent=1) + "\n"})
        self.saved_epoch = state["epoch"]

    def kept_state(self) -> str:
        """Where training can continue from, for the messages of a stopped run."""
        if self.saved_epoch is None:
            return "no epoch had finished, so there is nothing to resume"
        return (f"{os.path.join(self.model_dir, LAST_STATE)} holds epoch {self.saved_epoch}: "
                "add --resume to the same command to continue")

    def fit(self) -> dict:
        config = self.config
        last_epoch = config["num_epochs"]
        unsaved = None  # the newest end-of-epoch state not yet on disk
        epochs = range(self.start_epoch, last_epoch + 1)
        if not epochs:
            self.log.info(f"nothing to train: the run already reached epoch "
                          f"{self.start_epoch - 1} (raise num_epochs to train longer)")
        bar = tqdm(epochs, desc=f"train {config['normal_class']}", disable=None if self.main else True,
                   dynamic_ncols=True)
        self.vdl = TrainingLog(os.path.join(self.model_dir, VDL_FOLDER)
                               if self.main and config["use_visualdl"] else None,
                               self.start_epoch - 1 if self.state is not None else None)
        try:
            for epoch in bar:
                started = time.time()
                loss_sum = self.run_epoch(epoch)
                batches = len(self.sampler)
                if not math.isfinite(loss_sum):
                    raise Diverged(f"the loss became {loss_sum} in epoch {epoch}")
                if not _all_finite(self.cloner):
                    raise Diverged(f"the cloner's weights became NaN or infinite in epoch {epoch}")
                self.history["epoch"].append(epoch)
                self.history["loss"].append(loss_sum)
                self.vdl.epoch(epoch, loss_sum)
                bar.set_postfix(loss=f"{loss_sum:.4f}")
                self.log.info(f"epoch [{epoch}/{last_epoch}] loss {loss_sum:.4f} (sum over "
                              f"{batches} batches, mean {loss_sum / max(batches, 1):.4f}) "
                              f"{time.time() - started:.1f} s")
                with rank_zero_work(kinds=(Diverged,)):  # the others wait for rank 0 here
                    if self.main and epoch % config["eval_interval"] == 0:
                        self.evaluate(epoch)
                    if self.main:
                        unsaved = self.training_state(epoch)
                        if epoch % config["save_interval"] == 0 or epoch == last_epoch:
                            self.save_state(unsaved)
                            unsaved = None
        except Diverged as error:  # every process is here (the loss, or rank 0's evaluation)
            self.vdl.close()
            with rank_zero_work():
                if self.main and unsaved is not None:  # the last good epoch (save_interval > 1)
                    self.save_state(unsaved)
            raise Diverged(rank_zero_value(
                f"{error}; training stopped and the models saved before are kept; "
                f"{self.kept_state()}, or start again with a lower learning_rate")) from None
        except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM (utils/errors.py)
            self.vdl.close()
            if self.main and unsaved is not None:
                self.save_state(unsaved)
            self.log.info(f"{stop_word(stop)}: {self.kept_state()}")
            sys.exit(stop_exit(stop))
        finished_before = last_epoch < self.start_epoch
        with rank_zero_work():
            if self.main and (not finished_before or (
                    self.start_epoch - 1 == last_epoch and not self.final_model_saved())):
                self.save_model(FINAL_MODEL, last_epoch, {"selection": "final epoch"})
                drop_unneeded_experts(self.model_dir, self.experts_needed())
                final_path = weights_path(self.model_dir, FINAL_MODEL, config["weights_format"])
                self.log.info(f"saved {final_path}"
                              + (f"; best test ROC-AUC {self.best['image_auroc']:.4f} at epoch "
                                 f"{self.best['epoch']} in {BEST_MODEL}."
                                 f"{config['weights_format']}"
                                 if self.best["epoch"] is not None else ""))
                self.vdl.final_model(last_epoch, self.expert, self.cloner, self.test_cache, config,
                                     self.device, self.test_normalization)
        self.vdl.close()
        return {"model_dir": self.model_dir, "history": self.history, "best": self.best}


def _all_finite(layer: paddle.nn.Layer) -> bool:
    """True when no parameter or buffer of `layer` holds NaN or inf (one host sync)."""
    checks = [paddle.isfinite(value).all() for value in layer.state_dict().values()]
    return bool(paddle.stack(checks).all())


def train(config: dict, state: dict = None) -> dict:
    trainer = Trainer(config, state)
    # one run per model folder; a save that a crash cut short after its commit is finished first
    with folder_lock(trainer.model_dir) if trainer.main else contextlib.nullcontext():
        if trainer.main:
            finish_commits(trainer.model_dir)
        trainer.setup()
        return trainer.fit()


@report_user_errors
def main(argv=None):
    config, state = resolve_config(parse_args(argv))
    train(config, state)


if __name__ == "__main__":
    main()
