"""Shared fixtures: a tiny synthetic category, a random expert saved to a file, a trained model."""
import os
import sys

import numpy as np
import paddle
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils.checkpoint import save_state_dict  # noqa: E402
from utils.config import build_config  # noqa: E402
from utils.demo_data import make_demo_category  # noqa: E402
from vgg import Expert  # noqa: E402

SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")
IMG_SIZE = 64


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """data root holding category 'demo': 12 train, 4 good + 2 x 4 defective test images."""
    root = str(tmp_path_factory.mktemp("data"))
    make_demo_category(root, "demo", size=IMG_SIZE, num_train=12, num_test_good=4,
                       num_per_defect=4, seed=1)
    return root


@pytest.fixture(scope="session")
def expert_file(tmp_path_factory) -> str:
    """A randomly initialised VGG16 expert saved as .pdparams (exercises the loading code)."""
    paddle.seed(123)
    path = str(tmp_path_factory.mktemp("weights") / "vgg16_random.pdparams")
    save_state_dict(Expert().state_dict(), path)
    return path


def make_config(root: str, expert_file: str = None, **overrides) -> dict:
    """A validated config for the tiny demo category; keys can be overridden."""
    values = dict(dataset_name="folder", dataset_root=root, normal_class="demo",
                  mvtec_img_size=IMG_SIZE, num_epochs=1, batch_size=4, eval_interval=1,
                  seed=0, eval_batch_size=8, cpu_threads=2)
    if expert_file:
        values.update(pretrain=True, vgg_weights=expert_file)
    else:
        values.update(pretrain=False)
    values.update(overrides)
    return build_config(base=values, base_origin="the test config")


@pytest.fixture(scope="session")
def trained_model(demo_root, expert_file, tmp_path_factory) -> dict:
    """A cloner trained for 2 epochs (epochs 0..1) on the demo category: its folder and config."""
    from train import train
    save_dir = str(tmp_path_factory.mktemp("output"))
    config = make_config(demo_root, expert_file, num_epochs=1, save_dir=save_dir,
                         log_dir=os.path.join(save_dir, "logs"))
    summary = train(config)
    return {"config": config, "model_dir": summary["model_dir"],
            "model_path": os.path.join(summary["model_dir"], "final_model.pdparams"),
            "summary": summary}


@pytest.fixture
def rng():
    return np.random.default_rng(0)
