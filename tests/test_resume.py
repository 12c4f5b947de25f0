"""Crashes lose nothing: kill -9, Ctrl-C, a diverging loss or a failing disk mid-training, then
--resume ends with the very weights of an uninterrupted run (CPU, same seed)."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

import test as test_script
import train as train_script
from conftest import ROOT
from fault_injection import Steps, leftovers, run_until_killed, snapshot, steps_of
from network import Cloner
from script_helpers import (data_root, error_line, model_dir, run_main, run_script,  # noqa: F401
                            train_in, write_config)
from utils import checkpoint, files
from utils.checkpoint import (find_weights, load_training_state, read_model, read_state_dict,
                              save_model, save_state_dict, save_training_state)
from utils.config import build_config, save_config
from utils.errors import UserError
from utils.export_info import write_export_info
from utils.files import atomic_write_text, current_path, finish_commits
from vgg import Expert, build_expert, check_expert

NUM_EPOCHS = 20  # epochs 0..20: long enough to be stopped part way


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root) -> str:
    """The model folder of an uninterrupted run of train.py."""
    out = tmp_path_factory.mktemp("reference")
    train_in(out, data_root, num_epochs=NUM_EPOCHS, eval_interval=3)
    return model_dir(out)


def assert_same_run(folder, reference_folder):
    """Bit-identical final weights, the same history and the same best model."""
    final, expected = (read_state_dict(os.path.join(path, "final_model.pdparams"))
                       for path in (folder, reference_folder))
    assert sorted(final) == sorted(expected)
    for name in expected:
        assert final[name].tobytes() == expected[name].tobytes(), name
    for name in ("history.json", "best_model.json", "final_model.json"):
        with open(os.path.join(folder, name)) as ours, \
                open(os.path.join(reference_folder, name)) as theirs:
            assert same_but_folders(json.load(ours), json.load(theirs)), name


def same_but_folders(ours, theirs) -> bool:
    """Equal, but for where the runs wrote, how often they saved and whether they resumed."""
    if isinstance(ours, dict) and "config" in ours:
        run_keys = ("save_dir", "log_dir", "continue_train", "save_interval")
        ours, theirs = ({**info, "config": {key: value for key, value in info["config"].items()
                                            if key not in run_keys}} for info in (ours, theirs))
    return ours == theirs


def epochs_saved(folder) -> int:
    """How many epochs history.json (written with last.pdckpt) records."""
    try:
        with open(os.path.join(folder, "history.json")) as stream:
            return len(json.load(stream)["epoch"])
    except (OSError, ValueError):
        return 0


def start_training(config, **popen):
    return subprocess.Popen([sys.executable, "train.py", "--config", config], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def wait_for_epochs(process, folder, count, timeout=120):
    deadline = time.time() + timeout
    while epochs_saved(folder) < count:
        assert process.poll() is None, "training ended before it could be stopped"
        assert time.time() < deadline, "training is too slow"
        time.sleep(0.005)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path, data_root, reference):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=NUM_EPOCHS, eval_interval=3)
    folder = model_dir(tmp_path)
    checkpoints = random.randint(1, 6)
    process = start_training(config)
    wait_for_epochs(process, folder, checkpoints)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(folder, "final_model.pdparams"))
    saved = load_training_state(os.path.join(folder, "last.pdckpt"))["epoch"]
    assert checkpoints - 1 <= saved < NUM_EPOCHS
    resumed = run_script(["train.py", "--config", config, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"after epoch {saved}" in resumed.stdout
    assert_same_run(folder, reference)


def epochs_logged(out) -> int:
    try:
        with open(os.path.join(str(out), "logs", "demo_train.log")) as stream:
            return stream.read().count("epoch [")
    except OSError:
        return 0


@pytest.mark.parametrize("stop, word, status", [(signal.SIGINT, "interrupted", 130),
                                                 (signal.SIGTERM, "terminated", 143)])
@pytest.mark.slow
def test_ctrl_c_or_sigterm_saves_and_says_how_to_resume(tmp_path, data_root, reference, stop,
                                                        word, status):
    """With save_interval 100 only the stop's own save holds the epochs since epoch 0. SIGTERM is
    what `kill`, job schedulers and pre-emptible machines send before killing."""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=NUM_EPOCHS, eval_interval=3, save_interval=100)
    folder = model_dir(tmp_path)
    # a shell can start jobs with SIGINT ignored; a user's terminal does not
    process = start_training(config, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                       signal.SIG_DFL))
    logged = random.randint(3, 7)
    deadline = time.time() + 120
    while epochs_logged(tmp_path) < logged:
        assert process.poll() is None and time.time() < deadline
        time.sleep(0.005)
    process.send_signal(stop)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert "Traceback" not in err
    saved = load_training_state(os.path.join(folder, "last.pdckpt"))["epoch"]
    assert logged - 2 <= saved < NUM_EPOCHS  # the epoch being trained is lost, no more
    assert f"{word}: {os.path.join(folder, 'last.pdckpt')} holds epoch {saved}" in out
    assert "--resume" in out
    resumed = run_script(["train.py", "--config", config, "-o", "continue_train=true"])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(folder, reference)


def file_bytes(folder, names):
    return {name: open(os.path.join(folder, name), "rb").read() for name in names}


@pytest.mark.parametrize("save_interval", [1, 100])
@pytest.mark.slow
def test_diverging_loss_stops_and_keeps_the_last_good_state(tmp_path, data_root, capsys,
                                                            save_interval):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=1, batch_size=4, eval_interval=100)
    folder = model_dir(tmp_path)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    models = ("final_model.pdparams", "final_model.json", "best_model.pdparams",
              "best_model.json", "expert.pdparams")
    before = file_bytes(folder, models)
    # one batch per epoch: epoch 2's step throws the weights to ~1e30, epoch 3's loss overflows
    code, _, err = run_main(train_script.main, [
        "--config", config, "--resume", "-o", "num_epochs=8", "-o", "learning_rate=1e30",
        "-o", f"save_interval={save_interval}"], capsys)
    message = error_line(code, err)
    assert "the loss became nan in epoch 3" in message or "the loss became inf in epoch 3" \
        in message, message
    assert f"{os.path.join(folder, 'last.pdckpt')} holds epoch 2" in message
    state = load_training_state(os.path.join(folder, "last.pdckpt"))
    assert state["epoch"] == 2 and state["history"]["epoch"] == [0, 1, 2]
    assert all(np.isfinite(value).all() for value in state["cloner"].values())
    assert file_bytes(folder, models) == before


@pytest.mark.parametrize("where", ["weights", "scores", "weights in epoch 0"])
@pytest.mark.slow
def test_non_finite_weights_or_scores_stop_training(tmp_path, data_root, capsys, monkeypatch,
                                                    where):
    """A NaN that the epoch's loss did not show: in the weights after the last step, or in the
    test scores. (Injected here: a finite loss with broken weights is hard to provoke.)"""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=4, eval_interval=2, save_interval=100)
    bad_epoch = 0 if where.endswith("epoch 0") else 2
    run_epoch, score_cached = train_script.Trainer.run_epoch, train_script.score_cached
    epochs = []

    def poisoned_epoch(trainer, epoch):
        loss = run_epoch(trainer, epoch)
        epochs.append(epoch)
        if epoch == bad_epoch and where.startswith("weights"):
            weight = trainer.cloner.features[0].weight
            weight.set_value(paddle.full_like(weight, float("nan")))
        return loss

    def poisoned_scores(cloner, cache, config, stages_of=None):
        scores = score_cached(cloner, cache, config, stages_of)
        if where == "scores" and epochs[-1] == bad_epoch:
            return scores * np.nan  # the test scores of the evaluation, and the thresholds
        return scores

    monkeypatch.setattr(train_script.Trainer, "run_epoch", poisoned_epoch)
    monkeypatch.setattr(train_script, "score_cached", poisoned_scores)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    message = error_line(code, err)
    what = "test scores" if where == "scores" else "cloner's weights"
    assert f"the {what} became NaN or infinite in epoch {bad_epoch}" in message
    folder = model_dir(tmp_path)
    assert not os.path.exists(os.path.join(folder, "final_model.pdparams"))
    if bad_epoch == 0:
        assert "nothing to resume" in message
        assert not os.path.exists(os.path.join(folder, "last.pdckpt"))
    else:  # epoch 1's state, saved when training stopped, without epoch 2's history
        state = load_training_state(os.path.join(folder, "last.pdckpt"))
        assert state["epoch"] == 1 and state["history"]["epoch"] == [0, 1]
        assert state["history"]["eval_epoch"] == [0]
        best = read_state_dict(os.path.join(folder, "best_model.pdparams"))
        assert all(np.isfinite(value).all() for value in best.values())


@pytest.mark.slow
def test_resume_keeps_the_seed_when_the_config_file_says_null(tmp_path, data_root, capsys):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=0, seed=None)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    drawn = load_training_state(os.path.join(model_dir(tmp_path), "last.pdckpt"))["config"][
        "seed"]
    assert isinstance(drawn, int)
    resumed, _ = train_script.resolve_config(train_script.parse_args(
        ["--config", config, "--resume"]))
    assert resumed["seed"] == drawn
    chosen, _ = train_script.resolve_config(train_script.parse_args(
        ["--config", config, "--resume", "-o", "seed=5"]))
    assert chosen["seed"] == 5
    code, out, err = run_main(train_script.main, ["--config", config, "--resume"], capsys)
    assert code == 0 and "nothing to train: the run already reached epoch 0" in out, err


@pytest.mark.slow
def test_resume_does_not_depend_on_the_layers_built_before(tmp_path, data_root, capsys):
    """Paddle names optimizer accumulators after a process-wide layer counter; the saved state
    must load in a process that built other layers first."""
    straight = write_config(str(tmp_path / "straight.yaml"), data_root,
                            str(tmp_path / "straight"), num_epochs=3)
    stopped = write_config(str(tmp_path / "stopped.yaml"), data_root,
                           str(tmp_path / "stopped"), num_epochs=1)
    for config in (straight, stopped):
        code, _, err = run_main(train_script.main, ["--config", config], capsys)
        assert code == 0, err
    Expert(), Cloner(), Cloner(equal_network_size=True)  # move Paddle's name counters on
    code, _, err = run_main(train_script.main, ["--config", stopped, "--resume", "-o",
                                                "num_epochs=3"], capsys)
    assert code == 0, err
    ours = read_state_dict(os.path.join(model_dir(tmp_path / "stopped"), "final_model.pdparams"))
    theirs = read_state_dict(os.path.join(model_dir(tmp_path / "straight"),
                                          "final_model.pdparams"))
    for name in theirs:
        assert ours[name].tobytes() == theirs[name].tobytes(), name


# ---- a crash while a file is being written leaves the previous one intact -------------------

def half_then_fail(write):
    """A writer that writes half of what `write` would, then fails like a full disk."""
    def failing(value, path, *args, **kwargs):
        write(value, path, *args, **kwargs)
        if not isinstance(path, str):  # serialised in memory: the disk is not involved yet
            return None
        with open(path, "rb+") as stream:
            stream.truncate(os.path.getsize(path) // 2)
        raise OSError(28, "No space left on device")
    return failing


def half_of_bytes_then_fail(data):
    """bytes_writer on a disk that fills half way through the file."""
    def write(tmp_path):
        with open(tmp_path, "wb") as stream:
            stream.write(data[:len(data) // 2])
        raise OSError(28, "No space left on device")
    return write


def checkpoint_writers(folder):
    """(path, write(version), read()) for the project's writers of weights and states."""
    state = {name: value.numpy() for name, value in Cloner().state_dict().items()}

    def versioned(version):
        return {name: value + version for name, value in state.items()}

    pdparams, safetensors = (os.path.join(folder, "cloner" + suffix)
                             for suffix in (".pdparams", ".safetensors"))
    last = os.path.join(folder, "last.pdckpt")
    model = os.path.join(folder, "final_model.pdparams")
    return {
        "model": (model, lambda v: save_model(model, versioned(v), {"epoch": v}),
                  lambda: read_model(model)[0]["features.0.weight"]),
        "pdparams": (pdparams, lambda v: save_state_dict(versioned(v), pdparams),
                     lambda: read_state_dict(pdparams)["features.0.weight"]),
        "safetensors": (safetensors, lambda v: save_state_dict(versioned(v), safetensors),
                        lambda: read_state_dict(safetensors)["features.0.weight"]),
        "training state": (last, lambda v: save_training_state(
            last, {"cloner": versioned(v), "epoch": v}),
            lambda: load_training_state(last)["cloner"]["features.0.weight"]),
    }, state["features.0.weight"]


@pytest.mark.parametrize("kind", ["pdparams", "safetensors", "training state", "model"])
def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    writers, weight = checkpoint_writers(str(tmp_path))
    path, write, read = writers[kind]
    write(1)
    before = sorted(os.listdir(str(tmp_path)))
    monkeypatch.setattr(checkpoint.paddle, "save", half_then_fail(paddle.save))
    monkeypatch.setattr(checkpoint, "bytes_writer", half_of_bytes_then_fail)
    with pytest.raises(UserError) as error:
        write(2)
    assert path in str(error.value) and "unchanged" in str(error.value)
    np.testing.assert_array_equal(read(), weight + 1)
    assert sorted(os.listdir(str(tmp_path))) == before  # no temporary file left


def text_writers(folder):
    """(path, write(version)) for the project's JSON, YAML and CSV writers."""
    import test as test_script
    paths = {kind: os.path.join(folder, name) for kind, name in [
        ("export", "inference.yml"), ("yaml", "config.yaml"), ("csv", "scores.csv"),
        ("text", "history.json")]}
    return {
        "export": lambda v: write_export_info(folder, {"epoch": v}),
        "yaml": lambda v: save_config(build_config(overrides=[f"seed={v}"]), paths["yaml"]),
        "csv": lambda v: test_script.write_scores_csv(paths["csv"], ["a.png"], [1], [float(v)]),
        "text": lambda v: atomic_write_text(paths["text"], json.dumps({"epoch": v})),
    }, paths


@pytest.mark.parametrize("kind", ["export", "yaml", "csv", "text"])
def test_a_failed_text_write_keeps_the_previous_file(tmp_path, monkeypatch, kind):
    writers, paths = text_writers(str(tmp_path))
    writers[kind](1)
    before = open(paths[kind]).read()

    def crash(handle):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)  # after the data is written, before the rename
    with pytest.raises(UserError) as error:
        writers[kind](2)
    assert paths[kind] in str(error.value)
    assert open(paths[kind]).read() == before
    assert os.listdir(str(tmp_path)) == [os.path.basename(paths[kind])]


@pytest.mark.slow
def test_a_failed_write_during_training_keeps_the_last_state(tmp_path, data_root, capsys,
                                                             monkeypatch):
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=3, eval_interval=100)
    real_save = checkpoint.paddle.save
    calls = []

    def save_twice(value, path, *args, **kwargs):
        if isinstance(value, dict) and "optimizer" in value:  # the training state
            calls.append(path)
            if len(calls) == 2:
                return half_then_fail(real_save)(value, path, *args, **kwargs)
        return real_save(value, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.paddle, "save", save_twice)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    last = os.path.join(model_dir(tmp_path), "last.pdckpt")
    message = error_line(code, err)
    assert f"cannot write {last}: No space left on device" in message
    assert load_training_state(last)["epoch"] == 0
    assert not os.path.exists(os.path.join(model_dir(tmp_path), "final_model.pdparams"))


def test_written_files_get_the_usual_permissions(tmp_path):
    """Temporary files are private (0600); the file they become is not."""
    path = str(tmp_path / "config.json")
    atomic_write_text(path, "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o640)
    atomic_write_text(path, "{}")
    assert os.stat(path).st_mode & 0o777 == 0o640


@pytest.mark.slow
def test_a_reused_folder_never_scores_with_another_expert(tmp_path, data_root, capsys):
    """A new run in the same folder replaces the random expert at its start; until it has
    overwritten them, the earlier run's checkpoints are still there, and they refuse that expert
    instead of giving meaningless scores."""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                          num_epochs=1, eval_interval=1)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    folder = model_dir(tmp_path)
    expert_path = os.path.join(folder, "expert.pdparams")
    code, _, err = run_main(test_script.main, ["--config", config], capsys)
    assert code == 0, err  # the expert it was trained with
    paddle.seed(99)  # the next run's random expert
    save_state_dict(Expert().state_dict(), expert_path)
    for checkpoint_name, main, args in [
            ("final_model.pdparams", test_script.main, []),
            ("best_model.pdparams", test_script.main,
             ["--model_path", os.path.join(folder, "best_model.pdparams")]),
            ("last.pdckpt", train_script.main, ["--resume", "-o", "num_epochs=3"])]:
        code, _, err = run_main(main, ["--config", config, *args], capsys)
        assert (f"error: {os.path.join(folder, checkpoint_name)} was trained against another "
                f"expert than {expert_path}") in error_line(code, err)


# ---- one transaction per saved model: a crash at any step of any save -----------------------

@pytest.fixture(scope="module")
def short_reference(tmp_path_factory, data_root) -> str:
    """The model folder of an uninterrupted run of epochs 0..2."""
    out = tmp_path_factory.mktemp("short_reference")
    train_in(out, data_root, num_epochs=2)
    return model_dir(out)


def inside(folder: str, argument) -> bool:
    """Whether a hooked call's first argument (a path or a file descriptor) is in `folder`."""
    if isinstance(argument, int):
        try:
            argument = os.readlink(f"/proc/self/fd/{argument}")
        except OSError:
            return False
    path = os.path.realpath(os.fsdecode(argument))
    return path == os.path.realpath(folder) or path.startswith(os.path.realpath(folder) + os.sep)


def check_models(folder: str, config: dict, with_expert: bool = True) -> dict:
    """Load every model the folder holds as the scripts do; {name: epoch} of those found. Each
    one must be complete: weights that its .json describes, its expert, a training state with
    the history.json saved with it."""
    found = {}
    for stem in ("final_model", "best_model"):
        path = find_weights(folder, stem)
        if os.path.isfile(current_path(path)):
            weights, info = read_model(path)
            if with_expert:
                expert = build_expert(config, folder, info["expert_fingerprint"])
                check_expert(expert, info["expert_fingerprint"], path)
            found[stem] = info["epoch"]
    last = os.path.join(folder, "last.pdckpt")
    if os.path.isfile(current_path(last)):
        state = load_training_state(last)
        with open(current_path(os.path.join(folder, "history.json"))) as stream:
            assert json.load(stream) == state["history"]
        found["last.pdckpt"] = state["epoch"]
    return found


@pytest.mark.slow
def test_a_crash_after_any_step_of_any_save_in_training_leaves_complete_models(
        tmp_path, data_root, short_reference, monkeypatch, capsys):
    """After every step of every save of a run (expert, config, best and final models, training
    states), each model in the folder loads complete; resumed from there, the run ends with the
    very files of an uninterrupted one."""
    config_path = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path),
                               num_epochs=2)
    folder = model_dir(tmp_path)
    crashes = []

    def after(index, name, args):
        if args and inside(folder, args[0]):
            out = tmp_path / "crashes" / f"{len(crashes):03d}"
            crashes.append((snapshot(folder, model_dir(out), link_large=True), out, name))

    Steps(monkeypatch, after=after)
    code, _, err = run_main(train_script.main, ["--config", config_path], capsys)
    monkeypatch.undo()
    assert code == 0, err
    assert len(crashes) > 60
    monkeypatch.setattr(files, "_creator_alive", lambda name: False)  # the crashed process
    config = build_config(files=[config_path])
    progress = []
    for crashed, out, step in crashes:  # (the expert, saved once at the start, checked below)
        loaded = check_models(crashed, config, with_expert=False)
        finish_commits(crashed)  # what the next run does first
        assert check_models(crashed, config, with_expert=False) == loaded, step
        assert leftovers(crashed) == [], step
        progress.append(loaded)
    assert check_models(crashes[-1][0], config) == progress[-1]
    assert progress[-1] == {"final_model": 2, "best_model": progress[-1]["best_model"],
                            "last.pdckpt": 2}
    resumable = [(crashed, out) for (crashed, out, _), loaded in zip(crashes, progress)
                 if "last.pdckpt" in loaded]
    for crashed, out in random.sample(resumable[:-1], 3) + resumable[-1:]:
        resumed = write_config(str(out / "config.yaml"), data_root, str(out), num_epochs=2)
        code, _, err = run_main(train_script.main, ["--config", resumed, "--resume"], capsys)
        assert code == 0, err
        assert_same_run(crashed, short_reference)


def last_save(names: list) -> list:
    """The indices (1-based, as die_at_step.py counts) of the steps of a run's last save: from
    the creation of its staging folder to the end."""
    start = len(names) - 1 - names[::-1].index("mkdir")
    return list(range(start + 1, len(names) + 1))


@pytest.mark.slow
def test_killed_at_steps_of_the_final_save_the_run_resumes_to_the_same_models(
        tmp_path, data_root, short_reference):
    """A real SIGKILL at the creation of final_model's staging folder, at its commit, half way
    through moving its files and at its last step: final_model is absent or complete, and
    --resume ends with the files of an uninterrupted run."""
    counted = tmp_path / "counted"
    counted.mkdir()
    config = write_config(str(counted / "config.yaml"), data_root, str(counted), num_epochs=2)
    completed = run_until_killed(model_dir(counted), 10 ** 6, ["train.py", "--config", config])
    assert completed.returncode == 0, completed.stderr
    names = steps_of(completed)
    steps = last_save(names)
    commit = next(index for index in steps if names[index - 1] == "rename")
    chosen = [steps[0], commit - 1, commit, commit + 2, steps[-1]]
    for step in chosen:
        out = tmp_path / f"killed_at_{step}"
        out.mkdir()
        config = write_config(str(out / "config.yaml"), data_root, str(out), num_epochs=2)
        killed = run_until_killed(model_dir(out), step, ["train.py", "--config", config])
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        loaded = check_models(model_dir(out), build_config(files=[config]))
        assert loaded.get("final_model", 2) == 2 and loaded["last.pdckpt"] == 2
        assert ("final_model" in loaded) == (step >= commit), step
        resumed = run_script(["train.py", "--config", config, "--resume"])
        assert resumed.returncode == 0, resumed.stderr
        assert_same_run(model_dir(out), short_reference)
        assert leftovers(model_dir(out)) == []


def test_a_new_run_in_a_used_folder_keeps_the_earlier_models_usable_until_it_replaces_them(
        tmp_path, data_root, capsys, monkeypatch):
    """A new run with another random expert, stopped after its first epoch: the earlier run's
    final model still tests with its own expert (set aside under its fingerprint); once the new
    run has finished, only its expert is left."""
    config = write_config(str(tmp_path / "config.yaml"), data_root, str(tmp_path), num_epochs=0)
    folder = model_dir(tmp_path)
    code, _, err = run_main(train_script.main, ["--config", config], capsys)
    assert code == 0, err
    earlier = checkpoint.load_model_info(os.path.join(folder, "final_model.pdparams"))
    run_epoch = train_script.Trainer.run_epoch

    def stopped_in_epoch_1(trainer, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(trainer, epoch)

    monkeypatch.setattr(train_script.Trainer, "run_epoch", stopped_in_epoch_1)
    code, out, err = run_main(train_script.main, ["--config", config, "-o", "seed=99", "-o",
                                                  "num_epochs=2"], capsys)
    assert code == 130 and "holds epoch 0" in out, err
    kept = f"expert-{earlier['expert_fingerprint']}.pdparams"
    assert kept in os.listdir(folder)
    code, out, err = run_main(test_script.main, ["--config", config, "--save_dir",
                                                 str(tmp_path / "earlier")], capsys)
    assert code == 0, err  # the earlier final_model, with its own expert
    monkeypatch.undo()
    code, _, err = run_main(train_script.main, ["--config", config, "--resume", "-o", "seed=99",
                                                "-o", "num_epochs=2"], capsys)
    assert code == 0, err
    assert kept not in os.listdir(folder)
    info = checkpoint.load_model_info(os.path.join(folder, "final_model.pdparams"))
    assert info["expert_fingerprint"] != earlier["expert_fingerprint"] and info["epoch"] == 2
    code, _, err = run_main(test_script.main, ["--config", config], capsys)
    assert code == 0, err
