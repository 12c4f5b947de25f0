"""Bad input through the real scripts: one `error:` line naming the culprit, exit status 2.

Data problems, broken images (found before the first epoch, whatever `expert_cache` is),
config and command-line mistakes, and checkpoints that are not what they claim to be.
"""
import gc
import io
import os
import pickle
import shutil
import signal
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

import test as test_script
import train as train_script
from dataset import load_image, load_mask
from network import Cloner
from script_helpers import (error_line, run_main, run_script, tiny_category, user_error,  # noqa
                            write_config)
from utils.checkpoint import save_state_dict
from utils.config import build_config
from utils.folder_lock import LOCK_FILE
from utils.errors import UserError, report_user_errors


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("data"))
    tiny_category(root)
    return root


@pytest.fixture
def own_root(tmp_path, data_root) -> str:
    """A copy of the tiny data that a test may break."""
    root = str(tmp_path / "data")
    shutil.copytree(data_root, root)
    return root


@pytest.fixture
def config_file(tmp_path, data_root) -> str:
    return write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path / "out"))


def train_argv(config_path, root, *overrides):
    return ["--config", config_path, "--dataset_root", root] + [
        arg for override in overrides for arg in ("-o", override)]


# ---- the dataset ----------------------------------------------------------------------------

def test_missing_dataset_root_is_named(user_error, config_file, tmp_path):
    missing = str(tmp_path / "no_such_root")
    message = user_error(train_script.main, train_argv(config_file, missing))
    assert "dataset root not found" in message and missing in message


def test_missing_category_lists_what_exists(user_error, config_file, own_root):
    os.makedirs(os.path.join(own_root, "other"))
    message = user_error(train_script.main, train_argv(config_file, own_root)
                         + ["--normal_class", "dmeo"])
    assert "'dmeo'" in message and own_root in message and "demo, other" in message


@pytest.mark.parametrize("extra_folder", [False, True])
def test_empty_train_good_is_named(user_error, config_file, own_root, extra_folder):
    good = os.path.join(own_root, "demo", "train", "good")
    shutil.rmtree(good)
    os.makedirs(good)
    with open(os.path.join(good, "notes.txt"), "w") as stream:  # not an image: ignored
        stream.write("x")
    if extra_folder:  # images elsewhere in train/, none in train/good
        shutil.copytree(os.path.join(own_root, "demo", "test", "good"),
                        os.path.join(own_root, "demo", "train", "other"))
    message = user_error(train_script.main, train_argv(config_file, own_root))
    assert "no images" in message
    assert (good if extra_folder else os.path.join(own_root, "demo", "train")) in message


def as_mvtec_bottle(root: str) -> str:
    """The tiny category renamed to an MVTec AD one, so that dataset_name mvtec (every defect
    needs its mask) accepts it."""
    os.rename(os.path.join(root, "demo"), os.path.join(root, "bottle"))
    return os.path.join(root, "bottle")


def test_defect_image_without_mask_names_both_paths(user_error, config_file, own_root):
    folder = as_mvtec_bottle(own_root)
    mask = os.path.join(folder, "ground_truth", "blob", "000_mask.png")
    os.remove(mask)
    message = user_error(train_script.main, train_argv(
        config_file, own_root, "dataset_name=mvtec", "normal_class=bottle"))
    assert os.path.join(folder, "test", "blob", "000.png") in message and mask in message


def test_mask_without_image_names_both_paths(user_error, config_file, own_root):
    folder = as_mvtec_bottle(own_root)
    os.remove(os.path.join(folder, "test", "scratch", "000.png"))
    message = user_error(train_script.main, train_argv(
        config_file, own_root, "dataset_name=mvtec", "normal_class=bottle"))
    assert os.path.join(folder, "ground_truth", "scratch", "000_mask.png") in message
    assert os.path.join(folder, "test", "scratch", "000") in message


def truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as stream:
        stream.write(data[:len(data) // 2])


@pytest.mark.parametrize("storage", ["memory", *[pytest.param(storage, marks=pytest.mark.slow)
                                                for storage in ("float16", "disk", "none")]])
@pytest.mark.parametrize("broken", ["train/good/002.png", "test/scratch/000.png",
                                    "ground_truth/blob/000_mask.png"])
def test_broken_image_stops_training_before_epoch_0(user_error, config_file, own_root, tmp_path,
                                                   storage, broken):
    path = os.path.join(own_root, "demo", *broken.split("/"))
    truncate(path)
    message = user_error(train_script.main, train_argv(config_file, own_root,
                                                       f"expert_cache={storage}"))
    assert path in message and "truncated" in message
    model_dir = tmp_path / "out" / "models" / "demo"
    # nothing written, not even config.yaml or the random expert, only the run's lock file; the
    # disk cache's temporary folder goes when its object does (at the latest when the process ends)
    gc.collect()
    assert not model_dir.exists() or os.listdir(model_dir) in ([], [LOCK_FILE])
    log = (tmp_path / "out" / "logs" / "demo_train.log").read_text()
    assert "epoch [0/" not in log


def test_broken_test_image_stops_test_py_naming_it(user_error, tmp_path, own_root, capsys):
    config_path = write_config(str(tmp_path / "config.yaml"), own_root, str(tmp_path / "out"),
                               num_epochs=0)
    code, _, err = run_main(train_script.main, train_argv(config_path, own_root), capsys)
    assert code == 0, err
    broken = os.path.join(own_root, "demo", "test", "good", "001.png")
    with open(broken, "wb") as stream:
        stream.write(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    for localization in ("true", "false"):
        message = user_error(test_script.main, ["--config", config_path, "-o",
                                                f"localization_test={localization}"])
        assert broken in message


def test_other_colour_modes_load_as_rgb_and_masks_as_gray(tmp_path, rng):
    rgb = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    image = Image.fromarray(rgb)
    cases = {"cmyk.jpg": "CMYK", "la.png": "LA", "bits.png": "1", "int32.tif": "I",
             "float.tif": "F", "lab.tif": "LAB"}  # LAB: no direct conversion to L
    for name, mode in cases.items():
        path = str(tmp_path / name)
        image.convert(mode).save(path)
        assert Image.open(path).mode == mode, name
        loaded = load_image(path, 16)
        assert loaded.shape == (3, 16, 16) and loaded.dtype == np.float32, name
        assert 0.0 <= loaded.min() and loaded.max() <= 1.0 and loaded.max() > 0, name
        mask = load_mask(path, 16)
        assert mask.shape == (16, 16) and 0.0 <= mask.min() and mask.max() <= 1.0, name


def _valid_images():
    """Small files of several formats and modes, to be cut and scrambled."""
    pixels = np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3)
    files = []
    for fmt, mode in [("PNG", "RGB"), ("PNG", "P"), ("PNG", "I;16"), ("JPEG", "RGB"),
                      ("BMP", "RGB"), ("TIFF", "RGB"), ("TIFF", "F"), ("GIF", "P"),
                      ("WEBP", "RGB"), ("TIFF", "LAB")]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, fmt)
        files.append(buffer.getvalue())
    return files


VALID_IMAGES = _valid_images()


@st.composite
def damaged_images(draw):
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    cut = draw(st.integers(0, len(data)))
    kind = draw(st.sampled_from(["truncate", "scramble", "header_then_noise"]))
    if kind == "truncate":
        return bytes(data[:cut])
    if kind == "scramble":
        for position, value in draw(st.lists(st.tuples(st.integers(0, len(data) - 1),
                                                       st.integers(0, 255)), max_size=8)):
            data[position] = value
        return bytes(data)
    return bytes(data[:min(cut, 64)]) + draw(st.binary(max_size=300))


@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on broken files
@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), damaged_images()))
@example(b"")
@example(b"BM" + b"\xff" * 60)  # a bitmap header with an absurd size
def test_property_any_bytes_as_an_image_load_or_name_the_file(tmp_path, data):
    path = str(tmp_path / "image.png")
    with open(path, "wb") as stream:
        stream.write(data)
    for load in (load_image, load_mask):
        try:
            array = load(path, 8)
        except UserError as error:
            assert path in str(error) and "\n" not in str(error)
        else:
            assert np.isfinite(array).all() and 0.0 <= array.min() and array.max() <= 1.0


# ---- config and command line ----------------------------------------------------------------

CONFIG_MISTAKES = [
    ("batch_sise=2", "'batch_sise'"), ("batch_size=two", "'batch_size'"),
    ("lamda=-0.5", "'lamda'"), ("batch_size=0", "'batch_size'"),
    ("mvtec_img_size=100", "'mvtec_img_size'"), ("localization_method=saliency",
                                                 "'localization_method'"),
    ("dataset_name=imagenet", "'dataset_name'"), ("weights_format=pickle", "'weights_format'"),
]


@pytest.mark.parametrize("script", [train_script, test_script], ids=["train", "test"])
@pytest.mark.parametrize("override,culprit", CONFIG_MISTAKES)
def test_config_mistakes_on_the_command_line(user_error, config_file, data_root, script,
                                             override, culprit):
    message = user_error(script.main, train_argv(config_file, data_root, override))
    assert culprit in message and override.split("=")[1] in message


def test_config_mistake_in_a_file(user_error, tmp_path, data_root):
    path = write_config(str(tmp_path / "bad.yaml"), data_root, str(tmp_path), lamda=-1)
    message = user_error(train_script.main, ["--config", path])
    assert "'lamda'" in message and path in message


@pytest.mark.parametrize("args,culprit", [
    (["train.py", "-o", "lamda=-1"], "'lamda'"),
    (["test.py", "--config", "configs/demo.yaml", "-o", "localization_method=nope"],
     "'localization_method'"),
    (["-m", "utils.convert_weights", "missing.pdparams", "out.safetensors"], "missing.pdparams"),
])
@pytest.mark.slow
def test_real_command_lines_print_one_error_line(args, culprit):
    """Paddle's import-time notes must not come before the error on stderr."""
    completed = run_script(args)
    assert culprit in error_line(completed.returncode, completed.stderr)


@pytest.mark.slow
def test_ctrl_c_or_sigterm_anywhere_is_one_line_and_exit_130_or_143(capsys):
    @report_user_errors
    def interrupted():
        raise KeyboardInterrupt

    @report_user_errors
    def mangled():  # Paddle's C++ code can turn the KeyboardInterrupt into another error
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            raise SystemError("returned a result with an exception set") from None

    @report_user_errors
    def failing():
        raise SystemError("a real failure")

    @report_user_errors
    def terminated():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    # Python's own Ctrl-C handler, as in a terminal (a shell's `cmd &` starts with it ignored,
    # and report_user_errors leaves an ignored signal alone)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for main in (interrupted, mangled):
            code, _, err = run_main(lambda argv: main(), [], capsys)
            assert code == 130 and err == "interrupted\n"
        code, _, err = run_main(lambda argv: terminated(), [], capsys)
        assert code == 143 and err == "terminated\n"
        with pytest.raises(SystemError):
            failing()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, before)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.dictionaries(st.sampled_from(["lamda", "batch_size", "seed", "nope", "mvtec_img_size",
                                     "dataset_name", "normal_class"]),
                    st.one_of(st.integers(), st.floats(), st.text(max_size=8), st.booleans(),
                              st.none(), st.lists(st.integers(), max_size=3)))
    .map(lambda values: "\n".join(f"{key}: {value}" for key, value in values.items()).encode())))
@example(b"\xef\xbb\xbflamda: 0.1\n")  # a UTF-8 byte order mark
@example(b"lamda: 1\nlamda: 2\n")
def test_property_any_config_file_is_read_or_named(tmp_path, content):
    path = str(tmp_path / "config.yaml")
    with open(path, "wb") as stream:
        stream.write(content)
    try:
        config = build_config(files=[path])
    except UserError as error:
        assert path in str(error) and "\n" not in str(error)
    else:
        assert isinstance(config, dict)


# ---- checkpoints ------------------------------------------------------------------------------

@pytest.fixture
def test_config(tmp_path, data_root, expert_file) -> str:
    return write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path / "out"),
                        pretrain=True, vgg_weights=expert_file, localization_test=False)


def numpy_state(layer):
    return {name: value.numpy() for name, value in layer.state_dict().items()}


def test_equal_size_cloner_is_rebuilt_with_a_note(tmp_path, test_config, capsys):
    path = str(tmp_path / "cloner_a.pdparams")
    save_state_dict(Cloner(equal_network_size=True).state_dict(), path)
    code, out, err = run_main(test_script.main, ["--config", test_config, "--model_path", path,
                                                 "--save_dir", str(tmp_path / "results")],
                              capsys)
    assert code == 0, err
    assert f"note: {path} holds a cloner with equal_network_size: True; using that" in out
    assert (tmp_path / "results" / "metrics.json").is_file()


def broken_checkpoints(folder):
    """{name: (path, what the message must name)} of files that are not usable cloners."""
    state = numpy_state(Cloner())
    files = {}
    missing = dict(state)
    del missing["features.7._mean"]
    files["missing key"] = (missing, "features.7._mean")
    misshaped = dict(state, **{"features.0.weight": np.zeros((16, 3, 5, 5), np.float32)})
    files["misshaped key"] = (misshaped, "features.0.weight")
    not_finite = dict(state)
    not_finite["features.3.weight"] = np.full_like(state["features.3.weight"], np.nan)
    files["NaN weights"] = (not_finite, "features.3.weight")
    paths = {}
    for name, (values, culprit) in files.items():
        path = os.path.join(folder, name.replace(" ", "_") + ".pdparams")
        save_state_dict(values, path)
        paths[name] = (path, culprit)
    good = os.path.join(folder, "good.pdparams")
    save_state_dict(state, good)
    data = open(good, "rb").read()
    raw = {"truncated": data[: len(data) // 2], "empty": b"", "text": b"not weights\n",
           "json": b'{"features.0.weight": [1, 2]}', "png": VALID_IMAGES[0],
           "a pickled list": pickle.dumps([1, 2, 3]),
           "a pickled dict of strings": pickle.dumps({"a": "b"}),
           "truncated safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"}
    for name, content in raw.items():
        suffix = ".safetensors" if "safetensors" in name else ".pdparams"
        path = os.path.join(folder, name.replace(" ", "_") + suffix)
        with open(path, "wb") as stream:
            stream.write(content)
        paths[name] = (path, path)
    return paths


def test_broken_checkpoints_are_named_by_test_py(tmp_path, test_config, user_error):
    folder = tmp_path / "checkpoints"  # no config.yaml beside them
    folder.mkdir()
    for name, (path, culprit) in broken_checkpoints(str(folder)).items():
        message = user_error(test_script.main, ["--config", test_config, "--model_path", path])
        assert culprit in message and path in message, name


def test_broken_training_state_is_named_by_resume(tmp_path, config_file, data_root, user_error):
    model_dir = tmp_path / "out" / "models" / "demo"
    model_dir.mkdir(parents=True)
    last = model_dir / "last.pdckpt"
    message = user_error(train_script.main, train_argv(config_file, data_root) + ["--resume"])
    assert "nothing to resume" in message and str(last) in message
    for content in (b"", b"garbage", pickle.dumps({"cloner": {}}), VALID_IMAGES[0]):
        last.write_bytes(content)
        message = user_error(train_script.main, train_argv(config_file, data_root)
                             + ["--resume"])
        assert str(last) in message


# ---- hostile or odd files and values: refused before anything runs ------------------------------

def bomb(path):
    from test_dataset import png_claiming
    with open(path, "wb") as stream:
        stream.write(png_claiming(20_000, 20_000))


def symlink_loop(path):
    os.symlink(os.path.dirname(os.path.dirname(path)), path)  # test/blob/loop -> test


def empty_defect_folder(path):
    os.makedirs(path)


def mask_of_another_shape(path):
    Image.fromarray(np.zeros((8, 32), np.uint8)).save(path)


HOSTILE = [("train/good/002.png", bomb, "decompression bomb"),
           ("test/blob/loop", symlink_loop, "a symbolic link loops back"),
           ("test/dent", empty_defect_folder, "no images in"),
           ("ground_truth/blob/000_mask.png", mask_of_another_shape, "another aspect ratio")]


@pytest.mark.parametrize("where,make,culprit", HOSTILE, ids=[h[1].__name__ for h in HOSTILE])
def test_hostile_data_is_refused_in_one_line_before_training(user_error, config_file, own_root,
                                                             tmp_path, where, make, culprit):
    path = os.path.join(own_root, "demo", *where.split("/"))
    make(path)
    message = user_error(train_script.main, train_argv(config_file, own_root))
    assert culprit in message and os.path.join(own_root, "demo") in message
    model_dir = tmp_path / "out" / "models" / "demo"
    for checkpoint_file in ("last.pdckpt", "best_model.pdparams", "final_model.pdparams"):
        assert not (model_dir / checkpoint_file).exists()
    assert "epoch [0/" not in (tmp_path / "out" / "logs" / "demo_train.log").read_text()


@pytest.mark.slow
def test_file_names_that_are_not_utf8_go_through_every_script(tmp_path, own_root, capsys):
    """Trained on, tested and predicted; the CSV files stay valid UTF-8 (the odd bytes as
    \\xNN escapes) and the pictures keep the file's own name."""
    import predict as predict_script
    odd = {"train/good/000.png": b"\xff\xfe.png", "test/good/000.png": b"caf\xe9.png"}
    for where, name in odd.items():
        folder = os.path.join(own_root, "demo", os.path.dirname(where))
        os.rename(os.path.join(folder, "000.png"), os.path.join(folder, os.fsdecode(name)))
    config_path = write_config(str(tmp_path / "config.yaml"), own_root, str(tmp_path / "out"),
                               num_epochs=0)
    code, _, err = run_main(train_script.main, ["--config", config_path], capsys)
    assert code == 0, err
    code, _, err = run_main(test_script.main, ["--config", config_path, "--save_dir",
                                               str(tmp_path / "results")], capsys)
    assert code == 0, err
    scores = (tmp_path / "results" / "scores.csv").read_text(encoding="utf-8")
    assert os.path.join(own_root, "demo", "test", "good", "caf\\xe9.png") + ",0," in scores
    model = str(tmp_path / "out" / "models" / "demo" / "final_model.pdparams")
    code, out, err = run_main(predict_script.main, [
        "--model_path", model, "--image_path", os.path.join(own_root, "demo", "test"),
        "--save_dir", str(tmp_path / "predicted")], capsys)
    assert code == 0, err
    predictions = (tmp_path / "predicted" / "predictions.csv").read_text(encoding="utf-8")
    assert "caf\\xe9.png," in predictions
    assert os.path.isfile(os.path.join(str(tmp_path / "predicted"), "good",
                                       os.fsdecode(b"caf\xe9.png")))


@pytest.mark.parametrize("args,culprit", [
    (["train.py", "-o", "batch_size=1000000000"], "expected an integer in [1, 65536]"),
    (["train.py", "-o", "mvtec_img_size=1000000"], "a multiple of 32 in [32, 2048]"),
    (["test.py", "-o", "eval_batch_size=1000000000"], "'eval_batch_size'"),
    (["train.py", "-o", "dataset_root=!!python/object/apply:os.system ['touch {marker}']"],
     "YAML tags"),
])
def test_absurd_values_and_object_tags_on_real_command_lines(tmp_path, args, culprit):
    """Refused before the data are read or anything is allocated (the data root does not
    even exist), and nothing runs."""
    marker = tmp_path / "ran"
    completed = run_script(args[:1] + ["--config", "configs/demo.yaml", "--dataset_root",
                                       str(tmp_path / "none")]
                           + [arg.format(marker=marker) for arg in args[1:]])
    assert culprit in error_line(completed.returncode, completed.stderr)
    assert not marker.exists()


@pytest.mark.parametrize("script,flag,value,bound", [
    ("predict.py", "--batch_size", "1000000000", "[1, 65536]"),
    ("infer.py", "--batch_size", "1000000000", "[1, 65536]"),
    ("infer.py", "--cpu_threads", "1000000", "[1, 1024]")])
def test_absurd_flag_values_are_refused(script, flag, value, bound, capsys):
    module = __import__(script[:-3])
    required = {"predict.py": ["--image_path", "x", "--model_path", "m.pdparams"],
                "infer.py": ["--model_file", "m.json", "-i", "x"]}[script]
    with pytest.raises(SystemExit) as stop:
        module.parse_args(required + [flag, value])
    assert stop.value.code == 2
    assert f"{flag} must be in {bound}, got {value}" in capsys.readouterr().err


def test_an_inference_yml_with_an_object_tag_runs_nothing(tmp_path, capsys):
    import infer as infer_script
    marker = tmp_path / "ran"
    (tmp_path / "model.json").write_text("{}")
    (tmp_path / "model.pdiparams").write_bytes(b"")
    (tmp_path / "inference.yml").write_text(
        f"img_size: !!python/object/apply:os.system ['touch {marker}']\n")
    code, _, err = run_main(infer_script.main, ["--model_file", str(tmp_path / "model.json"),
                                                "-i", str(tmp_path)], capsys)
    assert str(tmp_path / "inference.yml") in error_line(code, err)
    assert not marker.exists()
