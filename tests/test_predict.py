"""predict.py on the tiny demo category: pictures, predictions.csv and verdicts."""
import csv
import json
import os
import shutil

import numpy as np
import paddle
import pytest
from PIL import Image

import infer
import predict
from anomaly_map import ScoreModel
from dataset import load_image
from network import load_cloner
from utils.image_files import list_images, picture_names
from vgg import build_expert


def read_rows(path):
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def stored_threshold(model_path):
    return json.load(open(os.path.splitext(model_path)[0] + ".json"))["image_threshold"]


def eager_scores(trained_model, paths):
    """Independent scores: the reloaded cloner and expert run eagerly, no predictor."""
    cloner, config = load_cloner(trained_model["model_path"], trained_model["config"])
    expert = build_expert(config, trained_model["model_dir"])
    images = np.stack([load_image(path, config["mvtec_img_size"]) for path in paths])
    with paddle.no_grad():
        return ScoreModel(expert, cloner, config["lamda"])(paddle.to_tensor(images)).numpy()


def run_predict(capsys, *args):
    predict.main(list(args))
    return capsys.readouterr().out


@pytest.mark.slow
def test_folder_gives_a_picture_and_a_verdict_per_image(trained_model, demo_root, tmp_path,
                                                        capsys):
    test_dir = os.path.join(demo_root, "demo", "test")
    out = tmp_path / "pred"
    printed = run_predict(capsys, "--image_path", test_dir, "--model_path",
                          trained_model["model_path"], "--save_dir", str(out),
                          "--batch_size", "5")
    assert b"\r" not in (out / "predictions.csv").read_bytes()  # LF line endings
    rows = read_rows(out / "predictions.csv")
    expected_paths = [os.path.join(test_dir, kind, f"{i:03d}.png")
                      for kind in ("blob", "good", "scratch") for i in range(4)]
    assert [row["path"] for row in rows] == expected_paths
    threshold = stored_threshold(trained_model["model_path"])
    scores = np.array([float(row["score"]) for row in rows])
    np.testing.assert_allclose(scores, eager_scores(trained_model, expected_paths), rtol=1e-3)
    for row, score in zip(rows, scores):
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-7)
        assert int(row["anomalous"]) == int(score > threshold)
        kind, name = row["path"].split(os.sep)[-2:]
        picture = Image.open(out / kind / name)
        assert picture.size[0] > 2 * picture.size[1] > 0  # three panels side by side
        assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 50
        verdict = "anomalous" if int(row["anomalous"]) else "normal"
        assert f"{row['path']}: score" in printed and verdict in printed


def test_score_threshold_overrides_the_stored_one_for_a_single_image(trained_model, demo_root,
                                                                      tmp_path, capsys):
    image = os.path.join(demo_root, "demo", "test", "good", "000.png")
    score = float(eager_scores(trained_model, [image])[0])
    for threshold, anomalous in ((score * 0.5, 1), (score * 2.0, 0)):
        out = tmp_path / f"t{anomalous}"
        run_predict(capsys, "--image_path", image, "--model_path", trained_model["model_path"],
                    "--save_dir", str(out), "--score_threshold", str(threshold),
                    "--localization_method", "feature_diff")
        (row,) = read_rows(out / "predictions.csv")
        assert float(row["threshold"]) == pytest.approx(threshold, rel=1e-7)
        assert int(row["anomalous"]) == anomalous
        assert os.path.isfile(out / "000.png")


def test_non_image_files_are_skipped(tmp_path, demo_root):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    (folder / ".hidden").mkdir()
    source = os.path.join(demo_root, "demo", "test", "good", "000.png")
    for target in (folder / "b.png", folder / "b.jpg", folder / "sub" / "a.PNG",
                   folder / ".hidden" / "c.png"):
        shutil.copy(source, target)
    (folder / "notes.txt").write_text("not an image")
    (folder / "out").mkdir()
    shutil.copy(source, folder / "out" / "old_result.png")
    found = list_images(str(folder), exclude=str(folder / "out"))
    assert found == [str(folder / "b.jpg"), str(folder / "b.png"), str(folder / "sub" / "a.PNG")]
    assert picture_names(found, str(folder)) == ["b.jpg.png", "b.png.png", "sub/a.png"]


@pytest.mark.slow
def test_a_corrupt_image_is_one_line_naming_it(trained_model, tmp_path, capsys, demo_root):
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(os.path.join(demo_root, "demo", "test", "good", "000.png"), folder / "a.png")
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--image_path", str(folder), "--model_path", trained_model["model_path"],
                      "--save_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error: cannot read image") and str(folder / "b.png") in err


def test_a_model_without_threshold_needs_score_threshold(trained_model, tmp_path, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for name in ("final_model.pdparams", "config.yaml"):
        shutil.copy(os.path.join(trained_model["model_dir"], name), model_dir / name)
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--image_path", str(tmp_path), "--model_path",
                      str(model_dir / "final_model.pdparams")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert str(model_dir / "final_model.json") in err and "--score_threshold" in err


def test_a_model_of_another_preprocessing_is_refused(trained_model, tmp_path, capsys):
    """A CIFAR-10 model expects a 224 px crop with ImageNet normalisation, not load_image's."""
    with pytest.raises(SystemExit) as exit_info:
        predict.main(["--image_path", str(tmp_path), "--model_path", trained_model["model_path"],
                      "-o", "dataset_name=cifar10", "-o", "normal_class=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cifar10" in err


def test_help_says_what_the_config_flags_do_for_prediction(capsys):
    with pytest.raises(SystemExit):
        predict.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    # flags that would choose a data set mean nothing here, so there are none
    assert "--dataset_root" not in text and "--normal_class" not in text
    assert "saved beside --model_path" in text and "--config CONFIG YAML config" in text


@pytest.mark.parametrize("flag", ["--image_path", "--input_file", "-i"])
def test_predict_and_infer_take_the_same_input_flags(flag):
    """A user who learnt one script can use its flags in the other; old names still work."""
    shared = [flag, "pictures/a.png", "--save_dir", "out", "-b", "3", "--threshold", "0.2",
              "--score_threshold", "0.7"]
    ours = predict.parse_args(shared + ["--model_path", "m.pdparams"])
    exported = infer.parse_args(shared + ["--model_file", "model.json", "--cpu_threads", "1"])
    for args in (ours, exported):
        assert (args.image_path, args.save_dir, args.batch_size, args.threshold,
                args.score_threshold) == ("pictures/a.png", "out", 3, 0.2, 0.7)
