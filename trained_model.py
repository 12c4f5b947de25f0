"""A trained model from its checkpoint alone: the config saved beside it, the cloner (its
architecture read from the file itself) and the very expert it was trained against."""
import argparse
import os

from network import load_cloner
from utils.checkpoint import find_weights, load_model_info
from utils.config import (WEIGHTS_FORMATS, add_config_args, config_from_args, load_saved_config,
                          parse_override)
from utils.errors import UserError
from vgg import EXPERT_STEM, build_expert, check_expert

# Settings that define a trained model: taken from its saved config unless given with -o.
MODEL_KEYS = ("pretrain", "vgg_weights", "equal_network_size", "use_bias", "mvtec_img_size",
              "lamda", "direction_loss_only")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--model_path", default=None,
                        help="cloner checkpoint (default: <save_dir>/<class>/final_model.pdparams "
                             "or .safetensors)")


def resolve_model(args):
    """(config, model_path): the run's config with the model's saved settings applied."""
    model_path = args.model_path
    if model_path is None:
        config = config_from_args(args)
        model_path = find_weights(os.path.join(config["save_dir"], str(config["normal_class"])),
                                  "final_model", config["weights_format"])
    if not os.path.isfile(model_path):
        raise missing_model(model_path, given=args.model_path is not None)
    saved_path = os.path.join(os.path.dirname(model_path), "config.yaml")
    if not os.path.isfile(saved_path):
        return config_from_args(args), model_path
    saved = load_saved_config(saved_path)
    config = config_from_args(args, base=saved)
    explicit = {parse_override(text)[0] for text in args.override}
    config.update({key: saved[key] for key in MODEL_KEYS if key not in explicit})
    return config, model_path


def missing_model(model_path: str, given: bool) -> UserError:
    """The error for a model that is not there: what to do depends on who chose the path."""
    if not given:
        return UserError(f"model not found: {model_path} (train first, or pass --model_path)")
    if os.path.isdir(model_path):
        return UserError(f"--model_path {model_path} is a folder; pass a weights file in it, "
                         f"e.g. {os.path.join(model_path, 'final_model.pdparams')}")
    folder = os.path.dirname(model_path) or "."
    names = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    models = [name for name in names if name.endswith(tuple("." + f for f in WEIGHTS_FORMATS))
              and not name.startswith(EXPERT_STEM + ".")]
    hint = f"; {folder} holds {', '.join(models)}" if models else ""
    return UserError(f"--model_path {model_path} not found{hint}")


def load_model(config: dict, model_path: str, log=print):
    """(expert, cloner, config): the cloner rebuilt with the architecture stored in its file."""
    cloner, resolved = load_cloner(model_path, config)
    for key in ("equal_network_size", "use_bias"):
        if resolved[key] != config[key]:
            log(f"note: {model_path} holds a cloner with {key}: {resolved[key]}; using that")
    expert = build_expert(resolved, model_dir=os.path.dirname(model_path))
    check_expert(expert, load_model_info(model_path).get("expert_fingerprint"), model_path)
    return expert, cloner, resolved
