"""Convert weights between Paddle's `.pdparams` (a pickle) and `.safetensors` (arrays only).

    python -m utils.convert_weights output/demo/demo/final_model.pdparams final_model.safetensors

The input may also be torchvision's `.pth` (needs PyTorch) or Keras' VGG16 `.h5` (needs h5py;
written in the expert's layout and input convention, utils/keras_weights.py). A `.pdparams`
input is unpickled with only NumPy's array builders allowed (utils/safe_pickle.py). The JSON that training writes
beside a cloner (epoch, image threshold) is copied beside the output when there is one.
"""
import argparse
import os
import shutil
from typing import List, Optional

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
from utils.checkpoint import info_path, read_state_dict, save_state_dict
from utils.errors import UserError, report_user_errors
from utils.files import atomic_write

OUTPUT_EXTENSIONS = (".pdparams", ".safetensors")


def convert(source: str, target: str, force: bool = False) -> int:
    """Write the arrays of `source` to `target`, in the format of its extension; returns how
    many arrays were written."""
    if not target.endswith(OUTPUT_EXTENSIONS):
        raise UserError(f"output {target} must end in .pdparams or .safetensors")
    if os.path.abspath(source) == os.path.abspath(target):
        raise UserError(f"input and output are the same file: {source}")
    state = read_state_dict(source)
    if not state:
        raise UserError(f"{source} holds no arrays")
    info = info_path(source) if os.path.isfile(info_path(source)) else None
    if info is not None and os.path.abspath(info) == os.path.abspath(info_path(target)):
        info = None  # same folder and stem: the JSON already sits beside the output
    for path in [target] + ([info_path(target)] if info else []):
        if os.path.exists(path) and not force:
            raise UserError(f"{path} exists; pass --force to replace it")
    save_state_dict(state, target)
    if info is not None:
        atomic_write(info_path(target), lambda tmp: shutil.copyfile(info, tmp))
    return len(state)


@report_user_errors
def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Convert weights: .pdparams <-> .safetensors.")
    parser.add_argument("source", help=".pdparams, .safetensors, .pth or Keras VGG16 .h5 file")
    parser.add_argument("target", help="output file, .pdparams or .safetensors")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    args = parser.parse_args(argv)
    count = convert(args.source, args.target, args.force)
    print(f"wrote {args.target} ({count} arrays)")


if __name__ == "__main__":
    main()
