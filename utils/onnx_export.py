"""A Paddle static model -> model.onnx with paddle2onnx, converted in a child process.

paddle2onnx aborts the whole process (SIGABRT) on a graph it cannot convert and prints its notes
straight to the terminal, so export_model.py runs `python -m utils.onnx_export` and keeps only
a one-line reason when it fails. The child also gives the outputs the Paddle graph's meaning
(`score` [N], `anomaly_map` [N, H, W], batch dimension `N`) and stores inference.yml's facts in
the model's metadata, for runtimes that read the .onnx alone.
"""
import argparse
import json
import os
import subprocess
import sys

from utils.errors import UserError

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OPSET = 13  # the lowest opset that holds the graph (DepthToSpace, TopK, ReduceSum axes)
OPSET_RANGE = (7, 21)  # what paddle2onnx 2.1 writes; below 13 it raises the opset to 13
BATCH_DIMENSION = "N"


def to_onnx(model_file: str, params_file: str, onnx_file: str, opset: int,
            metadata: dict) -> None:
    """Convert in a child process; a failure is a UserError with paddle2onnx's reason."""
    done = subprocess.run(
        [sys.executable, "-m", "utils.onnx_export", os.path.abspath(model_file),
         os.path.abspath(params_file), os.path.abspath(onnx_file), "--opset", str(opset),
         "--metadata", json.dumps(metadata)],
        cwd=PROJECT_ROOT, capture_output=True, text=True)
    if done.returncode != 0 or not os.path.isfile(onnx_file):
        raise UserError("paddle2onnx could not convert the exported graph to ONNX: "
                        f"{failure_reason(done.stdout + done.stderr, done.returncode)}")


def failure_reason(output: str, returncode: int) -> str:
    """The line of the child's output that says why (paddle2onnx's [ERROR] line if any)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "[ERROR]" in line]
    if errors:
        return errors[0].split("]")[-1].strip()
    if returncode < 0:
        return f"the converter was killed by signal {-returncode}"
    return lines[-1] if lines else f"exit status {returncode}"


def name_outputs(model) -> None:
    """Outputs `score` (rank 1) and `anomaly_map` (rank 3), batch dimension `N` everywhere."""
    renames = {}
    for output in model.graph.output:
        rank = len(output.type.tensor_type.shape.dim)
        renames[output.name] = {1: "score", 3: "anomaly_map"}[rank]
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
        node.input[:] = [renames.get(name, name) for name in node.input]
    for value in [*model.graph.input, *model.graph.output]:
        value.name = renames.get(value.name, value.name)
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIMENSION


def convert(model_file: str, params_file: str, onnx_file: str, opset: int,
            metadata: dict) -> None:
    """paddle2onnx, then names, metadata, unused constants dropped, the ONNX checker."""
    import onnx
    import paddle2onnx

    raw = onnx_file + ".raw"
    # optimize_tool "none": the default (Polygraphy) would pip-install its own dependencies
    paddle2onnx.export(model_file, params_file, save_file=raw, opset_version=opset,
                       auto_upgrade_opset=True, enable_onnx_checker=True,
                       optimize_tool="none")
    model = onnx.load(raw)
    os.remove(raw)
    try:
        import onnxoptimizer  # installed with paddle2onnx
        model = onnxoptimizer.optimize(model, ["eliminate_deadend",
                                               "eliminate_unused_initializer"])
    except ImportError:
        pass
    name_outputs(model)
    model.doc_string = "KDAD: image [N, 3, S, S] RGB in [0, 1] -> score [N], anomaly_map [N, S, S]"
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, onnx_file)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Paddle static model -> ONNX (paddle2onnx).")
    parser.add_argument("model_file")
    parser.add_argument("params_file")
    parser.add_argument("onnx_file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--metadata", default="{}", help="JSON object stored in the model")
    args = parser.parse_args(argv)
    convert(args.model_file, args.params_file, args.onnx_file, args.opset,
            json.loads(args.metadata))


if __name__ == "__main__":
    main()
