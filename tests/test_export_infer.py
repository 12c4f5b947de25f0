"""export_model.py then infer.py: the deployed model reproduces test.py's scores and maps."""
import csv
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.ndimage import uniform_filter

import export_model
import infer
import test as test_script
from utils.device import gpu_available

# oneDNN (infer.py, test.py's default engine on CPU) against eager Paddle: a max-pool window
# whose two largest inputs are nearly equal can pick the other one, which moves a little of the
# input gradient; measured on the demo data at most 5e-3 on [0, 1] maps, 1e-4 on average.
GRADIENT_MAP_MAX_ERROR, GRADIENT_MAP_MEAN_ERROR = 0.05, 2e-3
EAGER_SCORE_RTOL = 1e-3  # measured up to 2e-4: 1 - cos of nearly parallel features


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture(scope="module")
def exported(trained_model, tmp_path_factory):
    """{method: export folder} for the two map kinds the checks below cover."""
    folders = {}
    for method in ("gradients", "feature_diff"):
        folder = str(tmp_path_factory.mktemp(f"export_{method}"))
        export_model.main(["--model_path", trained_model["model_path"], "--save_dir", folder,
                           "--localization_method", method])
        folders[method] = folder
    return folders


@pytest.fixture(scope="module")
def test_script_results(trained_model, tmp_path_factory):
    """{(method, engine): (scores by path, maps by path)} from test.py --save_maps."""
    results = {}
    for method in ("gradients", "feature_diff"):
        for engine in ("auto", "eager"):
            out = tmp_path_factory.mktemp(f"test_{method}_{engine}")
            test_script.main(["--model_path", trained_model["model_path"], "--save_dir",
                              str(out), "--save_maps", "-o", f"localization_method={method}",
                              "-o", f"engine={engine}", "-o", f"log_dir={out}"])
            scores = {row["path"]: float(row["score"]) for row in read_rows(out / "scores.csv")}
            saved = np.load(out / "maps.npz")
            maps = dict(zip([str(p) for p in saved["paths"]], saved["maps"]))
            results[method, engine] = scores, maps
    return results


def run_infer(folder, input_file, save_dir, *extra):
    return infer.infer(infer.parse_args(["--model_file", os.path.join(folder, "model.json"),
                                         "--image_path", input_file, "--save_dir",
                                         str(save_dir), "--cpu_threads", "2", *extra]),
                       log=lambda line: None)


@pytest.mark.parametrize("method", ["gradients", "feature_diff"])
@pytest.mark.slow
def test_infer_reproduces_test_py(method, exported, test_script_results, trained_model,
                                  demo_root, tmp_path):
    out = tmp_path / "infer"
    result = run_infer(exported[method], os.path.join(demo_root, "demo", "test"), out,
                       "--batch_size", "5")
    paths = [p.path for p in result["predictions"]]
    scores = np.array([p.score for p in result["predictions"]])
    assert len(paths) == 12
    onednn_scores, _ = test_script_results[method, "auto"]
    eager_scores, eager_maps = test_script_results[method, "eager"]
    np.testing.assert_allclose(scores, [onednn_scores[p] for p in paths], rtol=1e-4)
    np.testing.assert_allclose(scores, [eager_scores[p] for p in paths], rtol=EAGER_SCORE_RTOL)
    expected = np.stack([eager_maps[p] for p in paths])
    assert result["maps"].shape == expected.shape == (12, 64, 64)
    if method == "gradients":
        error = np.abs(result["maps"] - expected)
        assert error.max() < GRADIENT_MAP_MAX_ERROR and error.mean() < GRADIENT_MAP_MEAN_ERROR
    else:  # no max-pool switches in a forward-only map: float rounding only
        np.testing.assert_allclose(result["maps"], expected, rtol=1e-3,
                                   atol=1e-4 * expected.max())
    assert b"\r" not in (out / "predictions.csv").read_bytes()  # LF line endings
    rows = read_rows(out / "predictions.csv")
    threshold = yaml.safe_load(open(os.path.join(exported[method], "inference.yml")))[
        "image_threshold"]
    stored = json.load(open(os.path.join(trained_model["model_dir"], "final_model.json")))
    assert threshold == pytest.approx(stored["image_threshold"])
    for row in rows:
        assert int(row["anomalous"]) == int(float(row["score"]) > threshold)
        kind, name = row["path"].split(os.sep)[-2:]
        assert os.path.isfile(out / kind / name)


def test_export_writes_the_metadata_infer_needs(exported, trained_model):
    info = yaml.safe_load(open(os.path.join(exported["feature_diff"], "inference.yml")))
    assert info["img_size"] == 64 and info["localization_method"] == "feature_diff"
    assert info["input"]["shape"] == [-1, 3, 64, 64]
    assert sorted(os.listdir(exported["feature_diff"])) == ["inference.yml", "model.json",
                                                             "model.pdiparams"]


def test_pdmodel_name_finds_model_json(exported, demo_root, tmp_path):
    image = os.path.join(demo_root, "demo", "test", "blob", "000.png")
    lines = []
    args = infer.parse_args(["--model_file", os.path.join(exported["gradients"], "model.pdmodel"),
                             "--input_file", image, "--save_dir", str(tmp_path)])
    by_pdmodel = infer.infer(args, log=lines.append)
    assert any("model.json" in line and line.startswith("note:") for line in lines)
    assert any(line.startswith("predictor: Paddle Inference on cpu, oneDNN") for line in lines)
    by_json = run_infer(exported["gradients"], image, tmp_path / "json")
    assert by_pdmodel["predictions"][0].score == by_json["predictions"][0].score


LEGACY_MODEL = """
import sys
import paddle
paddle.enable_static()
main, startup = paddle.static.Program(), paddle.static.Program()
with paddle.static.program_guard(main, startup):
    image = paddle.static.data("image", [None, 3, 16, 16], "float32")
    conv = paddle.nn.Conv2D(3, 1, 3, padding=1, bias_attr=False, weight_attr=paddle.ParamAttr(
        initializer=paddle.nn.initializer.Constant(1.0 / 27)))
    maps = paddle.reshape(conv(image), [-1, 16, 16])
    score = paddle.mean(maps, axis=[1, 2])
executor = paddle.static.Executor(paddle.CPUPlace())
executor.run(startup)
paddle.static.save_inference_model(sys.argv[1], [image], [score, maps], executor, program=main)
"""


def test_infer_runs_a_paddle2_program_desc_pdmodel(tmp_path, demo_root):
    """A real ProgramDesc model.pdmodel (Paddle's legacy format, written by Paddle 3 with the
    old IR): a toy 3x3 mean filter, not KDAD's graph, whose outputs are known exactly."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    env = {**os.environ, "FLAGS_enable_pir_api": "0"}
    subprocess.run([sys.executable, "-c", LEGACY_MODEL, str(folder / "model")], env=env,
                   check=True, capture_output=True)
    assert sorted(os.listdir(folder)) == ["model.pdiparams", "model.pdmodel"]
    (folder / "inference.yml").write_text(yaml.safe_dump(
        {"img_size": 16, "localization_method": "feature_diff", "image_threshold": 0.5}))
    image = os.path.join(demo_root, "demo", "test", "blob", "000.png")
    result = infer.infer(infer.parse_args(["--model_file", str(folder / "model.pdmodel"),
                                           "--input_file", image, "--save_dir",
                                           str(tmp_path / "out")]), log=lambda line: None)
    pixels = np.asarray(Image.open(image).convert("RGB").resize((16, 16), Image.BILINEAR),
                        dtype=np.float64) / 255.0
    expected = uniform_filter(pixels.mean(axis=2), size=3, mode="constant")
    np.testing.assert_allclose(result["maps"][0], expected, rtol=1e-5, atol=1e-6)
    assert result["predictions"][0].score == pytest.approx(expected.mean(), rel=1e-5)


def test_benchmark_report_without_auto_log(exported, demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "auto_log", None)  # `import auto_log` raises ImportError
    infer.main(["--model_file", os.path.join(exported["feature_diff"], "model.json"),
                "--input_file", os.path.join(demo_root, "demo", "test", "good"),
                "--save_dir", str(tmp_path), "--batch_size", "2", "--enable_benchmark", "True"])
    out = capsys.readouterr().out
    for needle in ("preprocess_time(ms)", "inference_time(ms)", "postprocess_time(ms)",
                   "images/s", "peak memory (max RSS)", "auto_log is not installed",
                   "data_num: 4 images in 2 batches"):
        assert needle in out, needle


def test_benchmark_feeds_auto_log_when_installed(exported, demo_root, tmp_path, monkeypatch):
    calls = []

    class Times:
        def start(self):
            calls.append("start")

        def stamp(self):
            calls.append("stamp")

        def end(self, stamp=False):
            calls.append("end")

    class AutoLogger:
        def __init__(self, **kwargs):
            calls.append(kwargs["inference_config"]["runtime_device"])
            self.times = Times()

        def report(self):
            calls.append("report")

    monkeypatch.setitem(sys.modules, "auto_log", types.SimpleNamespace(AutoLogger=AutoLogger))
    infer.main(["--model_file", os.path.join(exported["feature_diff"], "model.json"),
                "--input_file", os.path.join(demo_root, "demo", "test", "good", "000.png"),
                "--save_dir", str(tmp_path), "--enable_benchmark", "True"])
    assert calls == ["cpu", "start", "stamp", "stamp", "end", "report"]


def test_a_corrupt_image_is_one_line_naming_it(exported, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--model_file", os.path.join(exported["gradients"], "model.json"),
                    "--input_file", str(bad), "--save_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and err.startswith("error:")


def test_missing_metadata_and_impossible_options_are_one_line_errors(exported, tmp_path,
                                                                     capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model.pdiparams"):
        shutil.copy(os.path.join(exported["gradients"], name), bare / name)
    attempts = [(["--model_file", str(bare / "model.json")], "inference.yml"),
                (["--model_file", str(tmp_path / "nowhere" / "model.json")], "not found")]
    if not gpu_available():
        attempts.append((["--model_file", os.path.join(exported["gradients"], "model.json"),
                          "--use_gpu", "True"], "no usable GPU"))
    for args, needle in attempts:
        with pytest.raises(SystemExit) as exit_info:
            infer.main(args + ["--input_file", str(tmp_path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and needle in err


def test_export_refuses_a_many_copies_method(trained_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_model.main(["--model_path", trained_model["model_path"], "--save_dir",
                           str(tmp_path), "-o", "localization_method=smooth_grad"])
    assert exit_info.value.code == 2
    assert "smooth_grad" in capsys.readouterr().err


def test_files_of_two_exports_put_together_are_refused(exported, tmp_path, capsys):
    """inference.yml records the SHA-256 of its graph and weights: the feature_diff graph beside
    the gradients export's settings (a copy gone wrong) is one line, not wrong maps."""
    mixed = tmp_path / "mixed"
    shutil.copytree(exported["gradients"], mixed)
    shutil.copy(os.path.join(exported["feature_diff"], "model.json"), mixed / "model.json")
    with pytest.raises(SystemExit) as exit_info:
        infer.main(["--model_file", str(mixed / "model.json"), "--input_file", str(tmp_path),
                    "--save_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: {mixed / 'model.json'} does not belong with "
                   f"{mixed / 'inference.yml'} (its SHA-256 differs from the one recorded there: "
                   "the files come from different exports); export the model again")
    assert not (tmp_path / "out").exists()
