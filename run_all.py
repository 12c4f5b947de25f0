"""Train and test a list of categories (default: every category of the data set), resumably.

    python run_all.py --config configs/config.yaml --dataset_root Dataset/MVTec
    python run_all.py --config configs/demo.yaml --categories demo -o num_epochs=5

For each category, train.py and then test.py run as separate processes (a failing category does
not stop the others): training is skipped when <save_dir>/<category>/final_model.pdparams exists
and continued with --resume when only last.pdckpt does; the test writes
<results_dir>/<dataset>/<category>/ (metrics.json, scores.csv, pictures), and a category whose
metrics.json exists is skipped altogether, whatever the overrides (use another --results_dir to
compare settings). After every category the tables are rewritten:
<results_dir>/<dataset>_results.md and <results_dir>/<dataset>_results.json.

Several categories at once: `--gpus 0,1,2,3` runs one category per GPU (numbered as this process
sees them, so inside the parent's own CUDA_VISIBLE_DEVICES; each child sees its GPU alone and
runs with device=gpu),
`--jobs N` runs N categories on the CPU, each with its share of the cores (cpu_threads); the
children's output then goes to <log_dir>/<category>_console.log. Ctrl-C or SIGTERM is passed to
the running scripts, which save their state; the next run resumes them.
"""
import argparse
import json
import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

import utils.quiet  # noqa: F401  (before Paddle: keeps its import notes off stderr)
from utils.checkpoint import find_weights, load_model_info
from utils.children import Children, Slot, make_slots, run_in_slots, visible_gpus
from utils.config import MVTEC_CATEGORIES, build_config
from utils.device import gpu_available, usable_cores
from utils.errors import UserError, report_user_errors
from utils.files import atomic_write_text, finish_commits
from utils.folder_lock import folder_locks
from utils.results import results_json, results_markdown

HERE = os.path.dirname(os.path.abspath(__file__))
FINAL_MODEL, BEST_MODEL, LAST_STATE = "final_model", "best_model", "last.pdckpt"
METRICS_FILE = "metrics.json"


@dataclass
class Job:
    """Everything one category's train + test needs; picklable, so it can go to a process pool."""
    category: object
    config_path: str
    overrides: List[str]
    model_dir: str  # where train.py writes (<save_dir>/<category>)
    test_dir: str  # where test.py writes (<results_dir>/<dataset>/<category>)
    log_dir: str
    dataset_root: Optional[str] = None


def category_override(category) -> str:
    """normal_class=<category>, a name kept a string even when it looks like a number."""
    return f"normal_class={category}" if isinstance(category, int) else \
        f"normal_class={json.dumps(str(category))}"


def default_categories(config: dict) -> list:
    """Every category of the configured data set."""
    name = config["dataset_name"]
    if name == "mvtec":
        return list(MVTEC_CATEGORIES)
    if name in ("mnist", "fashionmnist", "cifar10"):
        return list(range(10))
    if name == "retina":
        return [config["normal_class"]]
    root = config["dataset_root"]
    if not os.path.isdir(root):
        raise UserError(f"dataset root not found: {root}")
    return sorted(entry for entry in os.listdir(root)
                  if os.path.isdir(os.path.join(root, entry, "train")))


def parse_categories(texts: List[str], dataset_name: str) -> list:
    return [int(text) if dataset_name in ("mnist", "fashionmnist", "cifar10") and text.isdigit()
            else text for text in texts]


def make_jobs(config_path: str, overrides: List[str], categories: list, results_dir: str,
              dataset_root: Optional[str] = None) -> List[Job]:
    """One job per category; every category's config is validated first (one line on error)."""
    jobs = []
    for category in categories:
        extra = ([f"dataset_root={dataset_root}"] if dataset_root else []) + [
            category_override(category)]
        config = build_config(files=[config_path], overrides=extra + list(overrides))
        jobs.append(Job(category=category, config_path=config_path, overrides=list(overrides),
                        model_dir=os.path.join(config["save_dir"], str(category)),
                        test_dir=os.path.join(results_dir, config["dataset_name"], str(category)),
                        log_dir=config["log_dir"], dataset_root=dataset_root))
    return jobs


def planned_steps(job: Job) -> List[str]:
    """What is left to do for a job: [], ['test'], ['train', 'test'] or ['resume', 'test']."""
    if os.path.isfile(os.path.join(job.test_dir, METRICS_FILE)):
        return []
    if os.path.isfile(find_weights(job.model_dir, FINAL_MODEL)):
        return ["test"]
    if os.path.isfile(os.path.join(job.model_dir, LAST_STATE)):
        return ["resume", "test"]
    return ["train", "test"]


def script_command(job: Job, step: str, slot: Slot = Slot("CPU")) -> List[str]:
    """The train.py / test.py command line of one step (the slot's overrides before the
    user's, so that an explicit -o wins; what the slot requires after them)."""
    args = ["--config", job.config_path, "-o", category_override(job.category)]
    if job.dataset_root:
        args += ["--dataset_root", job.dataset_root]
    for override in (*slot.overrides, *job.overrides, *slot.required):
        args += ["-o", override]
    if step == "test":
        return [sys.executable, os.path.join(HERE, "test.py"), *args, "--model_path",
                find_weights(job.model_dir, FINAL_MODEL), "--save_dir", job.test_dir]
    if step == "resume":  # the run keeps the seed it started with (train.py --resume)
        return [sys.executable, os.path.join(HERE, "train.py"), *args, "--resume"]
    return [sys.executable, os.path.join(HERE, "train.py"), *args]


def console_log(job: Job) -> str:
    """Where a child's terminal output goes when several categories run at once."""
    return os.path.join(job.log_dir, f"{job.category}_console.log")


def run_category(job: Job, slot: Slot = Slot("CPU"), run: Optional[Callable] = None) -> dict:
    """Train (or resume) and test one category; returns {'category', 'status', 'metrics',
    'error'} with status 'done', 'skipped' or 'failed'. `run(command, env, output)` runs a
    command and returns its exit status (Children.run)."""
    run = run or Children().run
    steps = planned_steps(job)
    output = console_log(job) if slot.own_output else None
    if output:
        os.makedirs(job.log_dir, exist_ok=True)
    for step in steps:
        status = run(script_command(job, step, slot), {**os.environ, **dict(slot.env)}, output)
        if status != 0:
            kind = "test" if step == "test" else "train"
            log = output or os.path.join(job.log_dir, f"{job.category}_{kind}.log")
            return {"category": job.category, "status": "failed", "metrics": None,
                    "error": f"{kind}.py exited with status {status} (see {log})"}
    with open(os.path.join(job.test_dir, METRICS_FILE), encoding="utf-8") as stream:
        metrics = json.load(stream)
    best = load_model_info(find_weights(job.model_dir, BEST_MODEL))
    if "image_auroc" in best:  # what training measured for its best-on-test model
        metrics = {**metrics, "best_image_auroc": best["image_auroc"], "best_epoch": best["epoch"]}
    return {"category": job.category, "status": "done" if steps else "skipped",
            "metrics": metrics, "error": None}


def write_results(results_dir: str, dataset: str, outcomes: List[dict], setup: dict) -> str:
    """<results_dir>/<dataset>_results.md and .json from the outcomes so far; returns the .md."""
    results = {str(o["category"]): o["metrics"] for o in outcomes}
    methods = sorted({m["localization_method"] for m in results.values()
                      if m and m.get("localization_method")})
    setup = {**setup, "localization_method": ", ".join(methods) or "none"}
    failed = {str(o["category"]): o["error"] for o in outcomes if o["status"] == "failed"}
    text = ", ".join(f"{key}: " + (" ".join(value) or "none" if isinstance(value, list)
                                    else str(value)) for key, value in setup.items())
    prefix = os.path.join(results_dir, f"{dataset}_results")
    atomic_write_text(prefix + ".md", results_markdown(dataset, results, failed,
                                                       f"Setup: {text}.") + "\n")
    atomic_write_text(prefix + ".json",
                      json.dumps(results_json(dataset, results, failed, setup), indent=2) + "\n")
    return prefix + ".md"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train and test every category, resumably.")
    parser.add_argument("--config", default="configs/config.yaml", help="YAML config file")
    parser.add_argument("--dataset_root", default=None, help="folder holding the categories")
    parser.add_argument("--categories", nargs="+", default=None,
                        help="categories to run (default: all of the data set)")
    parser.add_argument("--results_dir", default="results",
                        help="tables go here, each category's test output under <dataset>/")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to train.py and test.py (repeatable)")
    parser.add_argument("--gpus", default=None,
                        help="run one category per GPU at a time, e.g. 0,1,2,3 (the GPUs this "
                             "process sees: inside CUDA_VISIBLE_DEVICES when it is set)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="without --gpus: categories run at once on the CPU, each with its "
                             "share of the cores (default 1)")
    return parser.parse_args(argv)


def parse_gpus(text: Optional[str]) -> Optional[List[int]]:
    if text is None:
        return None
    gpus = [gpu.strip() for gpu in text.split(",") if gpu.strip()]
    if not gpus or not all(gpu.isdigit() for gpu in gpus) or len(set(map(int, gpus))) != len(gpus):
        raise UserError(f"--gpus must list distinct GPU numbers like 0,1,2,3, got '{text}'")
    if not gpu_available():
        raise UserError("--gpus needs paddlepaddle-gpu and a visible GPU; use --jobs N to run "
                        "several categories on the CPU")
    return [int(gpu) for gpu in gpus]


def gpu_names() -> List[str]:
    """What each GPU this process sees is called in its CUDA_VISIBLE_DEVICES (utils/children)."""
    import paddle
    return visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"),
                        paddle.device.cuda.device_count())


@report_user_errors
def main(argv=None) -> None:
    args = parse_args(argv)
    gpus = parse_gpus(args.gpus)
    slots = make_slots(gpus, args.jobs, usable_cores(), gpu_names() if gpus else ())
    base = build_config(files=[args.config], overrides=(
        [f"dataset_root={args.dataset_root}"] if args.dataset_root else []) + args.override)
    if gpus and base["device"] == "cpu":
        raise UserError("--gpus runs every category on a GPU, but config key 'device' is 'cpu'")
    dataset = base["dataset_name"]
    categories = parse_categories(args.categories, dataset) if args.categories else \
        default_categories(base)
    if not categories:
        raise UserError(f"no categories to run in {base['dataset_root']}")
    jobs = make_jobs(args.config, args.override, categories, args.results_dir, args.dataset_root)
    if len(slots) > 1 and base["pretrain"]:
        from vgg import DOWNLOADS  # download once here, not in every child at once
        if base["vgg_weights"] in DOWNLOADS:
            DOWNLOADS[base["vgg_weights"]]()
    setup = {"config": args.config, "overrides": args.override,
             "model": "final_model (the model after the last epoch)"}
    outcomes = {}  # job number -> outcome
    printing = threading.Lock()  # whole lines from the slots' threads

    def run_one(numbered: tuple, slot: Slot) -> dict:
        number, job = numbered
        steps = planned_steps(job)
        with printing:
            print(f"[{number}/{len(jobs)}] {job.category}: "
                  + (", ".join(steps) or "finished before, skipped")
                  + (f" on {slot.name}, output in {console_log(job)}" if slot.own_output and steps
                     else ""), flush=True)
        return run_category(job, slot, children.run)

    def on_done(numbered: tuple, outcome: dict) -> None:
        number, job = numbered
        with printing:
            if outcome["error"]:
                print(f"[{number}/{len(jobs)}] {job.category} failed: {outcome['error']}",
                      flush=True)
            elif len(slots) > 1 and outcome["status"] == "done":
                print(f"[{number}/{len(jobs)}] {job.category} done", flush=True)
        outcomes[number] = outcome
        write_results(args.results_dir, dataset, [outcomes.get(later, {
            "category": other.category, "status": "pending", "metrics": None, "error": None})
            for later, other in enumerate(jobs, 1)], setup)

    children = Children()
    with folder_locks([args.results_dir, base["save_dir"]]):  # one run_all per output folder
        finish_commits(args.results_dir)  # temporary files of a run that was killed
        run_in_slots(list(enumerate(jobs, 1)), slots, run_one, on_done, children)
    table = os.path.join(args.results_dir, f"{dataset}_results.md")
    print(f"wrote {table} and {os.path.splitext(table)[0]}.json")
    failed = [str(o["category"]) for o in outcomes.values() if o["status"] == "failed"]
    if failed:
        print(f"error: {len(failed)} of {len(jobs)} categories failed: {', '.join(failed)}",
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
