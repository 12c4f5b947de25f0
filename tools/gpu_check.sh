#!/usr/bin/env bash
# Check every GPU path of this project in a few minutes, on a small generated category, and print
# a pass/fail table: training with and without AMP (and resuming its loss scale), two GPUs,
# run_all.py --gpus, export, Paddle Inference with and without TensorRT, and GPU scores against
# CPU scores. Without a GPU the GPU rows are reported as skipped and the CPU rows still run.
#
#   bash tools/gpu_check.sh [work folder]      (default: a new folder under /tmp)
#
# PYTHON picks the interpreter (default .venv/bin/python, else python3). Exit status 1 when a
# row failed; each row's output is in <work folder>/logs/.
set -u
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
WORK=${1:-$(mktemp -d /tmp/kdad-gpu-check-XXXXXX)}
LOGS=$WORK/logs
mkdir -p "$LOGS"
export FLAGS_cudnn_deterministic=True  # two GPU runs of the same step give the same numbers

ROWS=()
FAILED=0
record() {  # check, result (pass | fail | skipped), detail
    ROWS+=("| $1 | $2 | $3 |")
    [[ $2 == fail ]] && FAILED=$((FAILED + 1))
    echo "$1: $2${3:+ ($3)}" >&2
}
log_of() {  # a file name for a check's output
    echo "$LOGS/$(echo "$1" | tr -c 'A-Za-z0-9\n' '_').log"
}
run() {  # check, command...: pass when the command succeeds
    local name=$1 log started=$SECONDS
    log=$(log_of "$1")
    shift
    if "$@" >"$log" 2>&1; then
        record "$name" pass "$((SECONDS - started)) s"
    else
        record "$name" fail "exit status $?, see $log"
        return 1
    fi
}
check() {  # check, command...: a Python check whose last output line is the detail
    local name=$1 log
    log=$(log_of "$1")
    shift
    if "$@" >"$log" 2>&1; then
        record "$name" pass "$(tail -n 1 "$log")"
    else
        record "$name" fail "$(tail -n 1 "$log"), see $log"
    fi
}
skip() {  # check, reason
    record "$1" skipped "$2"
}

# max relative difference of the `score` column of two CSV files (rows matched by `path`)
compare_scores() {  # a.csv b.csv tolerance
    "$PY" - "$@" <<'EOF'
import csv, sys
first, second = ({row["path"]: float(row["score"]) for row in csv.DictReader(open(name))}
                 for name in sys.argv[1:3])
assert first.keys() == second.keys(), "the two runs scored different images"
worst = max(abs(first[p] - second[p]) / max(abs(second[p]), 1e-12) for p in first)
print(f"{len(first)} images, max relative score difference {worst:.2e} "
      f"(allowed {float(sys.argv[3]):.0e})")
sys.exit(0 if worst <= float(sys.argv[3]) else 1)
EOF
}

# the same training loss, epoch by epoch, in two runs' history.json
compare_losses() {  # run_a run_b tolerance
    "$PY" - "$@" <<'EOF'
import json, sys
first, second = (json.load(open(f"{folder}/demo/history.json"))["loss"] for folder in sys.argv[1:3])
worst = max(abs(a - b) / abs(b) for a, b in zip(first, second))
print(f"losses {first} vs {second}: max relative difference {worst:.2e}")
sys.exit(0 if len(first) == len(second) and worst <= float(sys.argv[3]) else 1)
EOF
}

# the loss scale in last.pdckpt went on from the stopped run's (not from a fresh 2^16)
compare_scalers() {  # stopped_state.json resumed_run steps
    "$PY" - "$@" <<'EOF'
import json, sys
import utils.quiet
from utils.checkpoint import load_training_state
before = json.load(open(sys.argv[1]))
after = load_training_state(f"{sys.argv[2]}/demo/last.pdckpt")["scaler"]
after = {"scale": float(after["scale"][0]), "incr_count": int(after["incr_count"])}
print(f"loss scale {before} before the resume, {after} after {sys.argv[3]} more steps")
sys.exit(0 if after["incr_count"] == before["incr_count"] + int(sys.argv[3]) else 1)
EOF
}
save_scaler() {  # run folder, json file: the loss scale in last.pdckpt
    "$PY" - "$@" <<'EOF'
import json, sys
import utils.quiet
from utils.checkpoint import load_training_state
scaler = load_training_state(f"{sys.argv[1]}/demo/last.pdckpt")["scaler"]
state = {"scale": float(scaler["scale"][0]), "incr_count": int(scaler["incr_count"])}
json.dump(state, open(sys.argv[2], "w"))
print(f"last.pdckpt holds the loss scale {state}")
EOF
}

GPUS=$("$PY" -c "import utils.quiet, paddle; print(paddle.device.cuda.device_count()
      if paddle.device.is_compiled_with_cuda() else 0)" 2>/dev/null | tail -n 1)
GPUS=${GPUS:-0}
VERSION=$("$PY" -c "import utils.quiet, paddle; print(paddle.__version__)" 2>/dev/null | tail -n 1)
NO_GPU="no GPU visible to Paddle"

TRAIN=(train.py --config configs/demo.yaml --dataset_root "$WORK/data" --normal_class demo
       -o mvtec_img_size=64 -o num_epochs=1 -o batch_size=8 -o eval_batch_size=8
       -o eval_interval=1 -o seed=0 -o "log_dir=$LOGS")
STEPS=2  # 16 training images in batches of 8
MODEL=$WORK/cpu/demo/final_model.pdparams
TEST=(test.py --model_path "$MODEL" --dataset_root "$WORK/data" --normal_class demo --no_pictures
      -o "log_dir=$LOGS")
INFER=(infer.py --model_file "$WORK/inference/model.json" --image_path "$WORK/data/demo/test"
       --batch_size 4)

gpu() {  # run | check | infer_on_gpu, check name, ...: skipped without a GPU
    local how=$1
    shift
    if ((GPUS == 0)); then skip "$1" "$NO_GPU"; else "$how" "$@"; fi
}
infer_on_gpu() {  # check name, output folder, tolerance, infer.py options...
    local name=$1 folder=$2 tolerance=$3 log applied
    log=$(log_of "$1")
    shift 3
    if "$PY" "${INFER[@]}" --save_dir "$WORK/$folder" --use_gpu True "$@" >"$log" 2>&1; then
        applied=$(grep -m 1 '^predictor: ' "$log")
        if compare_scores "$WORK/$folder/predictions.csv" "$WORK/infer_cpu/predictions.csv" "$tolerance" \
            >>"$log" 2>&1; then
            record "$name" pass "${applied#predictor: }; $(tail -n 1 "$log")"
        else
            record "$name" fail "$(tail -n 1 "$log"), see $log"
        fi
    elif grep -q "needs paddlepaddle-gpu built with TensorRT" "$log"; then
        record "$name" skipped "$(tail -n 1 "$log" | cut -c 1-200)"
    else
        record "$name" fail "$(tail -n 1 "$log" | cut -c 1-200), see $log"
    fi
}

run "make a small category" "$PY" -m utils.demo_data --root "$WORK/data" --size 64 \
    --num_train 16 --num_test_good 4 --num_per_defect 4
run "CPU: train 2 epochs" "$PY" "${TRAIN[@]}" -o device=cpu -o "save_dir=$WORK/cpu"
gpu run "GPU: train 2 epochs" "$PY" "${TRAIN[@]}" -o device=gpu -o "save_dir=$WORK/gpu"
gpu run "GPU: train 2 epochs, the expert recomputed (expert_cache: none)" "$PY" "${TRAIN[@]}" \
    -o device=gpu -o expert_cache=none -o "save_dir=$WORK/gpu_none"
gpu check "GPU: the host-memory cache gives the recomputed losses" \
    compare_losses "$WORK/gpu" "$WORK/gpu_none" 1e-4
gpu run "GPU: train 2 epochs with AMP" "$PY" "${TRAIN[@]}" -o device=gpu -o amp=true \
    -o "save_dir=$WORK/gpu_amp"
gpu check "GPU: last.pdckpt holds AMP's loss scale" \
    save_scaler "$WORK/gpu_amp" "$WORK/scaler.json"
gpu run "GPU: resume the AMP run for a 3rd epoch" "$PY" "${TRAIN[@]}" -o device=gpu -o amp=true \
    -o "save_dir=$WORK/gpu_amp" -o num_epochs=2 --resume
gpu check "GPU: the resumed run goes on with the loss scale" \
    compare_scalers "$WORK/scaler.json" "$WORK/gpu_amp" "$STEPS"
if ((GPUS > 1)); then
    run "GPU: 2 processes on 2 GPUs, engine: inference" "$PY" -m paddle.distributed.launch \
        --gpus 0,1 --log_dir "$LOGS/launch" "${TRAIN[@]}" -o device=gpu -o engine=inference \
        -o "save_dir=$WORK/gpu2"
else
    skip "GPU: 2 processes on 2 GPUs, engine: inference" "needs 2 GPUs, found $GPUS"
fi
LAST_GPU=$((GPUS > 0 ? GPUS - 1 : 0))
gpu run "GPU: run_all.py --gpus $LAST_GPU" "$PY" run_all.py --config configs/demo.yaml \
    --dataset_root "$WORK/data" --categories demo --gpus "$LAST_GPU" \
    --results_dir "$WORK/run_all" -o mvtec_img_size=64 -o num_epochs=1 -o batch_size=8 \
    -o "save_dir=$WORK/run_all_models" -o "log_dir=$LOGS"

run "export the CPU-trained model" "$PY" export_model.py --model_path "$MODEL" \
    --save_dir "$WORK/inference"
run "CPU: infer.py" "$PY" "${INFER[@]}" --save_dir "$WORK/infer_cpu"
gpu infer_on_gpu "GPU: infer.py scores equal CPU's" infer_gpu 1e-3
gpu infer_on_gpu "GPU: infer.py with TensorRT fp32" infer_trt32 1e-3 --use_tensorrt True
gpu infer_on_gpu "GPU: infer.py with TensorRT fp16" infer_trt16 5e-2 --use_tensorrt True \
    --precision fp16
run "CPU: test.py" "$PY" "${TEST[@]}" -o device=cpu --save_dir "$WORK/test_cpu"
gpu run "GPU: test.py" "$PY" "${TEST[@]}" -o device=gpu --save_dir "$WORK/test_gpu"
gpu check "GPU: test.py scores equal CPU's" \
    compare_scores "$WORK/test_gpu/scores.csv" "$WORK/test_cpu/scores.csv" 1e-3
gpu run "GPU: test.py, engine: inference" "$PY" "${TEST[@]}" -o device=gpu -o engine=inference \
    --save_dir "$WORK/test_gpu_inference"
gpu check "GPU: Paddle Inference's scores equal CPU's" \
    compare_scores "$WORK/test_gpu_inference/scores.csv" "$WORK/test_cpu/scores.csv" 1e-3
gpu run "GPU: benchmark.py --device gpu" "$PY" benchmark.py --device gpu --img_size 64 \
    --batch_size 4 --num_train 8 --num_test_good 2 --num_per_defect 2 --repeats 1 \
    --smooth_grad_samples 2 --ig_steps 2 --memory_images 8 --output "$WORK/benchmark.md"
gpu check "GPU: benchmark.py reports the GPU memory" \
    grep -m 1 "peak GPU memory" "$WORK/benchmark.md"

echo
echo "Paddle ${VERSION:-?}, $GPUS GPU(s); work folder $WORK"
echo
echo "| check | result | detail |"
echo "|---|---|---|"
printf '%s\n' "${ROWS[@]}"
exit $((FAILED > 0))
