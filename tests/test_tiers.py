"""The two test tiers and the commands around them: `make test` runs the fast tier, which still
calls into every module of the project; `make test-all` runs everything and is what CI runs;
`make setup` shows what it is doing."""
import ast
import configparser
import glob
import os
import re
import subprocess

from conftest import ROOT

# For each module of the project, a fast test (not marked slow) that calls into it directly,
# or `via` a module it calls that imports it.
FAST_TESTS = {
    "anomaly_map": "tests/test_anomaly_map.py::test_gradient_map_equals_the_reference_pipeline",
    "backprop": "tests/test_backprop.py::test_input_gradient_equals_autograd",
    "benchmark": "tests/test_benchmark.py::test_the_naive_auc_loop_gives_the_papers_auc",
    "classification_datasets": "tests/test_datasets_extra.py::test_cifar10_preprocessing",
    "dataloader": "tests/test_dataset.py::test_test_loader_streams_batches",
    "dataset": "tests/test_dataset.py::test_masks_are_paired_by_file_name",
    "engine": "tests/test_engine.py::test_predictor_and_eager_agree_on_scores",
    "expert_cache": "tests/test_expert_cache.py::test_float16_cache_is_close via train",
    "export_model": "tests/test_export_infer.py::test_export_writes_the_metadata_infer_needs",
    "infer": "tests/test_export_infer.py::test_pdmodel_name_finds_model_json",
    "loss_functions": "tests/test_loss_functions.py::test_mse_direction_loss_equals_numpy",
    "max_pool_grad": "tests/test_max_pool_grad.py::test_a_training_step_of_the_cloner_is_bit_identical",
    "metrics": "tests/test_metrics.py::test_image_auroc_equals_mann_whitney",
    "network": "tests/test_network.py::test_cloner_stage_shapes",
    "onednn_conv": "tests/test_onednn_conv.py::test_weights_changed_between_calls_are_used",
    "predict": "tests/test_predict.py::test_a_model_without_threshold_needs_score_threshold",
    "run_all": "tests/test_run_all.py::test_planned_steps_follow_the_files_on_disk",
    "test": "tests/test_end_to_end.py::test_test_script_writes_metrics_and_scores",
    "test_functions": "tests/test_streaming_memory.py::test_maps_are_kept_in_test_order",
    "train": "tests/test_end_to_end.py::test_training_writes_checkpoints_logs_and_thresholds",
    "train_step": "tests/test_train_step.py::test_the_step_is_the_loss_of_the_cloner_stages",
    "trained_model": "tests/test_trained_model.py::test_a_wrong_model_path_names_the_models_beside_it",
    "utils.batch_loader": "tests/test_batch_loader.py::test_batches_equal_paddles_dataloader",
    "utils.benchmark": "tests/test_export_infer.py::test_benchmark_report_without_auto_log via infer",
    "utils.checkpoint": "tests/test_network.py::test_checkpoint_with_a_missing_key_names_it",
    "utils.children": "tests/test_run_all.py::test_each_slot_runs_one_job_at_a_time_and_all_slots_are_used",
    "utils.config": "tests/test_config.py::test_overrides_are_parsed_as_yaml",
    "utils.convert_weights": "tests/test_safetensors.py::test_converter_round_trip_keeps_every_bit",
    "utils.csv_files": "tests/test_csv_files.py::test_lines_end_in_lf_and_read_back_unchanged",
    "utils.demo_data": "tests/test_dataset.py::test_test_loader_streams_batches",
    "utils.device": "tests/test_run_all.py::test_gpus_on_a_machine_without_one_is_one_line",
    "utils.device_copy": "tests/test_expert_cache.py::test_a_gpu_gets_pinned_copies_and_the_cpu_none",
    "utils.forwards": "tests/test_max_pool_grad.py::test_only_non_overlapping_pools_inside_the_block_are_replaced via max_pool_grad",
    "utils.distributed": "tests/test_end_to_end.py::test_training_writes_checkpoints_logs_and_thresholds via train",
    "utils.errors": "tests/test_batch_loader.py::test_a_failing_item_raises_its_own_error",
    "utils.export_info": "tests/test_export_infer.py::test_export_writes_the_metadata_infer_needs via export_model",
    "utils.files": "tests/test_resume.py::test_a_failed_text_write_keeps_the_previous_file",
    "utils.folder_lock": "tests/test_folder_lock.py::test_one_folder_named_twice_is_locked_once",
    "utils.image_files": "tests/test_predict.py::test_non_image_files_are_skipped",
    "utils.keras_weights": "tests/test_keras_weights.py::test_keras_h5_converts_back_to_the_expert_it_was_written_from via utils.checkpoint",
    "utils.logger": "tests/test_end_to_end.py::test_training_writes_checkpoints_logs_and_thresholds via train",
    "utils.onnx_export": "tests/test_onnx_export.py::test_a_graph_paddle2onnx_refuses_is_one_line_and_keeps_the_old_model via export_model",
    "utils.onnx_runtime": "tests/test_onnx_export.py::test_a_corrupt_model_onnx_is_one_line_naming_it via infer",
    "utils.optimizer_state": "tests/test_end_to_end.py::test_training_writes_checkpoints_logs_and_thresholds via train",
    "utils.optional": "tests/test_onnx_export.py::test_export_without_paddle2onnx_says_what_to_install via export_model",
    "utils.plots": "tests/test_plots.py::test_every_picture_is_written",
    "utils.predictions": "tests/test_visualize.py::test_three_panels_and_the_overlay_only_when_anomalous",
    "utils.quiet": "tests/test_end_to_end.py::test_test_script_writes_metrics_and_scores via test",
    "utils.report": "tests/test_report.py::test_exactly_one_threshold_decides",
    "utils.results": "tests/test_run_all.py::test_mvtec_tables_have_the_earlier_ports_layout",
    "utils.safe_pickle": "tests/test_network.py::test_checkpoint_with_a_missing_key_names_it via utils.checkpoint",
    "utils.seed": "tests/test_end_to_end.py::test_training_writes_checkpoints_logs_and_thresholds via train",
    "utils.thumbnails": "tests/test_thumbnails.py::test_jpeg_bytes_decode_to_the_strip",
    "utils.training_speed": "tests/test_training_speed.py::test_fashion_mnist_class_estimate_adds_up_its_parts",
    "utils.visualdl_log": "tests/test_visualdl_log.py::test_keep_records_stops_at_a_record_cut_by_a_crash",
    "utils.visualize": "tests/test_visualize.py::test_three_panels_and_the_overlay_only_when_anomalous",
    "vgg": "tests/test_vgg.py::test_fingerprint_is_the_weights_in_either_format",
}


def project_modules() -> list:
    """Every module of the project: the scripts and modules at the top, and utils/."""
    names = [os.path.relpath(path, ROOT)[:-len(".py")].replace(os.sep, ".")
             for pattern in ("*.py", os.path.join("utils", "*.py"))
             for path in glob.glob(os.path.join(ROOT, pattern))]
    return sorted(name for name in names if not name.endswith("__init__"))


def parse(path: str) -> ast.Module:
    with open(os.path.join(ROOT, path), encoding="utf-8") as stream:
        return ast.parse(stream.read())


def find_test(node_id: str) -> tuple:
    """(the file's syntax tree, the test's function definition) of `file::name`."""
    path, name = node_id.split("::")
    tree = parse(path)
    functions = [node for node in tree.body
                 if isinstance(node, ast.FunctionDef) and node.name == name]
    assert functions, f"{node_id} does not exist"
    return tree, functions[0]


def is_slow(tree: ast.Module, function: ast.FunctionDef) -> bool:
    """Marked slow itself, or in a file whose `pytestmark` is slow."""
    marks = [ast.unparse(decorator) for decorator in function.decorator_list]
    marks += [ast.unparse(node.value) for node in tree.body if isinstance(node, ast.Assign)
              and any(getattr(target, "id", "") == "pytestmark" for target in node.targets)]
    return any("mark.slow" in mark for mark in marks)


def imported_names(tree: ast.AST) -> dict:
    """{name bound by the imports of a file or function: the module it comes from}."""
    bound = {}
    for node in (tree.body if isinstance(tree, ast.Module) else ast.walk(tree)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                bound[alias.asname or alias.name] = full if node.module == "utils" else node.module
    return bound


def functions_of(path: str) -> dict:
    """{name: (the file's imports, definition)} of the file's top-level functions."""
    tree = parse(path)
    bound = imported_names(tree)
    return {node.name: (bound, node) for node in tree.body if isinstance(node, ast.FunctionDef)}


def modules_called(test_file: str, function: ast.FunctionDef) -> set:
    """The project modules that a test uses: names imported from them, scripts it runs by
    name, and the same in the helpers and fixtures (of its file, conftest.py and
    script_helpers.py) that it calls or requests."""
    helpers = {**functions_of("tests/conftest.py"), **functions_of("tests/script_helpers.py"),
               **functions_of(test_file)}
    used, seen = set(), set()
    pending = [(imported_names(parse(test_file)), function)]
    while pending:
        bound, node = pending.pop()
        bound = {**bound, **imported_names(node)}  # and what it imports itself
        names = [arg.arg for arg in node.args.args]  # fixtures it requests
        for child in ast.walk(node):
            if isinstance(child, ast.Name):
                names.append(child.id)
            elif isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) \
                    and bound.get(child.value.id) == "utils":
                used.add(f"utils.{child.attr}")
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                used.update(re.findall(r"\b(\w+)\.py\b", child.value))
        for name in names:
            if name in bound:
                used.add(bound[name])
            if name in helpers and name not in seen:
                seen.add(name)
                pending.append(helpers[name])
    return used


def imports_of(module: str) -> set:
    """The modules that a project module imports, at its top or inside its functions."""
    tree = parse(module.replace(".", os.sep) + ".py")
    return set(imported_names(tree).values()).union(
        *(imported_names(node).values() for node in ast.walk(tree)
          if isinstance(node, ast.FunctionDef)))


def test_every_module_has_a_fast_test_that_calls_into_it():
    missing = sorted(set(project_modules()) - set(FAST_TESTS))
    assert not missing, f"add a fast test calling into {missing} to FAST_TESTS in {__file__}"
    assert not set(FAST_TESTS) - set(project_modules()), "FAST_TESTS names a module that is gone"
    for module, entry in FAST_TESTS.items():
        node_id, _, via = entry.partition(" via ")
        tree, function = find_test(node_id)
        assert not is_slow(tree, function), f"{node_id} is marked slow: pick a fast test"
        assert not any("fixture" in ast.unparse(d) for d in function.decorator_list), node_id
        called = modules_called(node_id.split("::")[0], function)
        assert (via or module) in called, f"{node_id} does not call {via or module}"
        assert not via or module in imports_of(via), f"{via} does not import {module}"


def make_dry_run(*targets) -> str:
    """The commands `make` would run, treating the virtualenv as installed unless asked."""
    env = {key: value for key, value in os.environ.items()  # also when make runs the tests
           if key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "--no-print-directory", "-n", *targets], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_make_test_is_the_fast_tier_and_make_test_all_everything():
    fast = make_dry_run("-o", ".venv/.installed", "test").strip().splitlines()
    full = make_dry_run("-o", ".venv/.installed", "test-all").strip().splitlines()
    assert fast == ['.venv/bin/python -m pytest -q -m "not slow" tests']
    assert full == [".venv/bin/python -m pytest -q tests"]


def test_make_setup_shows_its_progress():
    """pip is not silenced, and a line says what is going on before it starts."""
    commands = make_dry_run("-B", "setup").splitlines()
    installs = [line for line in commands if "pip install" in line]
    assert installs and not any(re.search(r"\s(-q|--quiet)\b", line) for line in installs)
    assert commands[0].startswith("echo ") and "install" in commands[0]


def test_ci_runs_setup_then_every_test():
    steps = [line for line in open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8")
             .read().splitlines() if line.startswith("make ")]
    assert steps == ["make setup", "make test-all"]


def test_slow_is_a_registered_marker_and_unknown_markers_fail():
    ini = configparser.ConfigParser()
    ini.read(os.path.join(ROOT, "pytest.ini"))
    assert "--strict-markers" in ini["pytest"]["addopts"]
    assert re.search(r"^slow: ", ini["pytest"]["markers"].strip(), re.M)
