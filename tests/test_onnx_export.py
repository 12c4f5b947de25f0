"""export_model.py --format onnx, then infer.py with ONNX Runtime: test.py's scores and maps, for
every exportable localization method; and both scripts without the optional packages."""
import csv
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import yaml

import export_model
import infer
import test as test_script
from anomaly_map import EXPORTABLE_METHODS, AnomalyMapModel
from script_helpers import run_main, user_error  # noqa: F401  (a fixture)
from utils.errors import UserError
from utils.files import scratch_folder
from utils.optional import pinned
from vgg import Expert
from network import Cloner

HAVE_ONNX = all(importlib.util.find_spec(name) for name in ("paddle2onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason="paddle2onnx or onnxruntime not "
                                "installed (pip install -r requirements-extras.txt)")
SCORE_RTOL = MAP_ATOL = 1e-4
# Gradient maps route each max-pool window's gradient to its arg-max. Where a window's two
# largest inputs lie within float32 rounding of each other, ONNX Runtime and oneDNN (different
# convolution kernels) can pick different ones; the moved gradient, blurred with sigma 4, changes
# up to a 33 x 33 patch of that image's map. Paddle's own eager and oneDNN engines differ the same
# way (test_export_infer.py). Measured on the test data: 8 of 12 images within 2e-5 everywhere,
# the others up to 3e-3; mean 1.4e-4 (gbp) and 3e-5 (gradients).
FLIPPED_MAP_ATOL, MIN_EXACT_IMAGES, GRADIENT_MAP_MEAN_ERROR = 1e-2, 2 / 3, 3e-4


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def export(model_path, folder, *extra, log=lambda line: None):
    args = export_model.parse_args(["--model_path", model_path, "--save_dir", str(folder),
                                    *extra])
    return export_model.export(args, log=log)


def run_infer(model_file, image_path, save_dir, *extra):
    return infer.infer(infer.parse_args(["--model_file", str(model_file), "--image_path",
                                         str(image_path), "--save_dir", str(save_dir),
                                         "--cpu_threads", "2", *extra]),
                       log=lambda line: None)


@pytest.fixture(scope="module")
def onnx_models(trained_model, tmp_path_factory):
    """{method: model.onnx} exported from the trained demo model."""
    if not HAVE_ONNX:
        pytest.skip("paddle2onnx or onnxruntime not installed")
    return {method: export(trained_model["model_path"], tmp_path_factory.mktemp(f"onnx_{method}"),
                           "--format", "onnx", "--localization_method", method)
            for method in EXPORTABLE_METHODS}


def results_of_test_py(model_path, method, out):
    """(scores by path, maps by path) from test.py --save_maps with its default engine."""
    test_script.main(["--model_path", model_path, "--save_dir", str(out), "--save_maps",
                      "-o", f"localization_method={method}", "-o", f"log_dir={out}"])
    scores = {row["path"]: float(row["score"]) for row in read_rows(out / "scores.csv")}
    saved = np.load(out / "maps.npz")
    return scores, dict(zip([str(p) for p in saved["paths"]], saved["maps"]))


@needs_onnx
@pytest.mark.slow
@pytest.mark.parametrize("method", EXPORTABLE_METHODS)
def test_onnx_runtime_reproduces_test_py(method, onnx_models, trained_model, demo_root,
                                         tmp_path):
    expected_scores, expected_maps = results_of_test_py(trained_model["model_path"], method,
                                                     tmp_path / "test")
    result = run_infer(onnx_models[method], os.path.join(demo_root, "demo", "test"),
                       tmp_path / "infer", "--batch_size", "5")
    paths = [p.path for p in result["predictions"]]
    assert len(paths) == 12 and sorted(paths) == sorted(expected_scores)
    scores = np.array([p.score for p in result["predictions"]])
    np.testing.assert_allclose(scores, [expected_scores[p] for p in paths], rtol=SCORE_RTOL)
    expected = np.stack([expected_maps[p] for p in paths])
    assert result["maps"].shape == expected.shape == (12, 64, 64)
    if method == "feature_diff":  # no arg-max anywhere: float rounding only
        np.testing.assert_allclose(result["maps"], expected, rtol=0, atol=MAP_ATOL)
    else:
        worst = np.abs(result["maps"] - expected).reshape(12, -1).max(axis=1)
        assert np.mean(worst <= MAP_ATOL) >= MIN_EXACT_IMAGES, worst
        assert worst.max() <= FLIPPED_MAP_ATOL, worst
        assert np.abs(result["maps"] - expected).mean() <= GRADIENT_MAP_MEAN_ERROR
    threshold = yaml.safe_load(open(os.path.join(os.path.dirname(onnx_models[method]),
                                                 "inference.yml")))["image_threshold"]
    for row in read_rows(tmp_path / "infer" / "predictions.csv"):
        assert int(row["anomalous"]) == int(float(row["score"]) > threshold)


@needs_onnx
@pytest.mark.slow  # the three exports of onnx_models
def test_onnx_model_names_dynamic_batch_and_metadata(onnx_models, demo_root):
    import onnxruntime

    from dataset import load_image
    from utils.onnx_runtime import make_session, run_session

    model_file = onnx_models["gradients"]
    session = make_session(model_file, cpu_threads=2)
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("image", ["N", 3, 64, 64])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [
        ("score", ["N"]), ("anomaly_map", ["N", 64, 64])]
    info = yaml.safe_load(open(os.path.join(os.path.dirname(model_file), "inference.yml")))
    assert info["format"] == "onnx" and info["model_file"] == "model.onnx"
    assert info["opset_version"] >= 13 and info["params_file"] is None
    stored = session.get_modelmeta().custom_metadata_map
    assert json.loads(stored["image_threshold"]) == pytest.approx(info["image_threshold"])
    assert stored["localization_method"] == "gradients" and json.loads(stored["img_size"]) == 64
    folder = os.path.join(demo_root, "demo", "test", "blob")
    images = np.stack([load_image(os.path.join(folder, name), 64)
                       for name in sorted(os.listdir(folder))[:3]])
    scores, maps = run_session(session, images)
    for i in range(3):  # the batch dimension is free and the images independent
        one_score, one_map = run_session(session, images[i:i + 1])
        np.testing.assert_allclose(one_score, scores[i:i + 1], rtol=1e-5)
        np.testing.assert_allclose(one_map[0], maps[i], atol=1e-5)
    assert onnxruntime.__version__ == pinned("onnxruntime").split("==")[1]


@needs_onnx
@pytest.mark.slow
def test_one_exported_model_per_folder(trained_model, tmp_path):
    lines = []
    export(trained_model["model_path"], tmp_path, "--localization_method", "feature_diff")
    export(trained_model["model_path"], tmp_path, "--format", "onnx", "--localization_method",
           "feature_diff", log=lines.append)
    assert sorted(os.listdir(tmp_path)) == ["inference.yml", "model.onnx"]
    assert any(line.startswith("note: removed") and "model.json" in line for line in lines)
    export(trained_model["model_path"], tmp_path, "--localization_method", "feature_diff")
    assert sorted(os.listdir(tmp_path)) == ["inference.yml", "model.json", "model.pdiparams"]
    assert yaml.safe_load(open(tmp_path / "inference.yml"))["format"] == "paddle"


@needs_onnx
def test_a_graph_paddle2onnx_refuses_is_one_line_and_keeps_the_old_model(tmp_path):
    """max_pool2d's mask + max_unpool2d (the 'unpool' rule) has no ONNX converter: the error
    names the reason, and the model exported before stays as it was."""
    earlier = tmp_path / "model.onnx"
    earlier.write_bytes(b"an earlier export")
    layer = AnomalyMapModel(Expert(), Cloner(), 0.5, "gradients", max_pool_rule="unpool")
    with pytest.raises(UserError) as error, scratch_folder(str(tmp_path)) as scratch:
        export_model.write_model(layer, scratch, 32, onnx_metadata={})
    message = str(error.value)
    assert "unsupported operators" in message and "\n" not in message
    assert earlier.read_bytes() == b"an earlier export"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_export_without_paddle2onnx_says_what_to_install(trained_model, tmp_path, monkeypatch,
                                                         user_error):
    monkeypatch.setitem(sys.modules, "paddle2onnx", None)  # `import paddle2onnx` fails
    message = user_error(export_model.main, ["--model_path", trained_model["model_path"],
                                             "--save_dir", str(tmp_path), "--format", "onnx"])
    assert "--format onnx needs paddle2onnx" in message
    assert "pip install paddle2onnx==2.1.0" in message
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_paddle_export_and_inference_without_the_extras(trained_model, demo_root, tmp_path,
                                                        monkeypatch, capsys):
    for name in ("paddle2onnx", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = run_main(export_model.main, ["--model_path", trained_model["model_path"],
                                                  "--save_dir", str(tmp_path / "paddle"),
                                                  "--localization_method", "feature_diff"],
                              capsys)
    assert code == 0, err
    image = os.path.join(demo_root, "demo", "test", "good", "000.png")
    result = run_infer(tmp_path / "paddle" / "model.json", image, tmp_path / "out")
    assert result["maps"].shape == (1, 64, 64)


@needs_onnx
@pytest.mark.slow  # the three exports of onnx_models
def test_infer_without_onnxruntime_says_what_to_install(onnx_models, demo_root, tmp_path,
                                                        monkeypatch, user_error):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    message = user_error(infer.main, ["--model_file", onnx_models["feature_diff"],
                                      "--image_path", os.path.join(demo_root, "demo", "test"),
                                      "--save_dir", str(tmp_path)])
    assert f"running {onnx_models['feature_diff']} needs onnxruntime" in message
    assert "pip install onnxruntime==1.32.0" in message


@needs_onnx
@pytest.mark.slow  # the three exports of onnx_models
@pytest.mark.parametrize("options,needle", [
    (["--precision", "bf16"], "ONNX Runtime runs"),
    (["--use_gpu", "True", "--use_tensorrt", "True"], "ONNX Runtime runs"),
    (["--use_gpu", "True"], "no CUDA provider"),
])
def test_paddle_only_options_on_an_onnx_model_are_one_line_errors(onnx_models, demo_root,
                                                                   tmp_path, options, needle,
                                                                   user_error):
    import onnxruntime

    if "--use_tensorrt" not in options and "CUDAExecutionProvider" in \
            onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider")
    message = user_error(infer.main, ["--model_file", onnx_models["feature_diff"],
                                      "--image_path", os.path.join(demo_root, "demo", "test"),
                                      "--save_dir", str(tmp_path), *options])
    assert needle in message


@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                    reason="onnxruntime not installed (pip install -r requirements-extras.txt)")
def test_a_corrupt_model_onnx_is_one_line_naming_it(demo_root, tmp_path, user_error):
    model_file = tmp_path / "model.onnx"
    model_file.write_bytes(b"not a protobuf")
    (tmp_path / "inference.yml").write_text(yaml.safe_dump(
        {"img_size": 64, "localization_method": "gradients", "image_threshold": 0.5}))
    message = user_error(infer.main, ["--model_file", str(model_file), "--image_path",
                                      os.path.join(demo_root, "demo", "test", "good"),
                                      "--save_dir", str(tmp_path / "out")])
    assert message.startswith(f"error: cannot load {model_file} (")
    assert not (tmp_path / "out" / "predictions.csv").exists()


@pytest.mark.parametrize("opset", ["6", "22"])
def test_an_opset_paddle2onnx_cannot_write_is_refused(opset, capsys):
    with pytest.raises(SystemExit) as stop:
        export_model.parse_args(["--model_path", "m.pdparams", "--format", "onnx",
                                 "--opset_version", opset])
    assert stop.value.code == 2
    assert f"--opset_version must be in 7..21, got {opset}" in capsys.readouterr().err
