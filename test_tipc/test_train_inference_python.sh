#!/usr/bin/env bash
# Paddle's train-infer chain test (TIPC) for KDAD: train, evaluate, export, then run infer.py
# over every flag combination of the config; one `Run successfully` / `Run failed` line per step
# in <output>/results_python.log, and a non-zero exit when any step failed.
#
#   bash test_tipc/prepare.sh test_tipc/configs/KDAD/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/test_train_inference_python.sh test_tipc/configs/KDAD/train_infer_python.txt lite_train_lite_infer
#
# PYTHON=/path/to/python overrides the config's `python:` line (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

CONFIG=${1:?usage: $0 <train_infer_python.txt> <mode>}
MODE=${2:?usage: $0 <train_infer_python.txt> <mode>}
case "$MODE" in
    lite_train_lite_infer|whole_train_whole_infer) ;;
    *) echo "error: mode must be lite_train_lite_infer or whole_train_whole_infer, got $MODE" >&2
       exit 2 ;;
esac
[[ -f "$CONFIG" ]] || { echo "error: config not found: $CONFIG" >&2; exit 2; }

value() { func_for_mode "$(func_value_of "$CONFIG" "$1")" "$MODE"; }
PYTHON=${PYTHON:-$(value python)}
MODEL_NAME=$(value model_name)
OUTPUT=./test_tipc/output/$MODEL_NAME/$MODE
RESULTS=$OUTPUT/results_python.log
rm -rf "$OUTPUT"  # logs of this run only
mkdir -p "$OUTPUT"
failures=0

# Run "$@" with stdout and stderr in log $1; record its status.
run_step() {
    local log=$1
    shift
    "$@" > "$log" 2>&1
    local status=$?
    func_status_check $status "$* > $log 2>&1" "$RESULTS"
    [[ $status -eq 0 ]] || failures=$((failures + 1))
    return $status
}

# ---- train
train_flags=$(func_flags_of_section "$CONFIG" train_params "$MODE")
read -ra train_script <<< "$(value "$(value trainer)")"
run_step "$OUTPUT/train.log" "$PYTHON" "${train_script[@]}" $train_flags

# ---- eval (the checkpoint's own settings come from the config saved beside it)
model_path=$(value Global.pretrained_model)
read -ra eval_script <<< "$(value eval)"
if [[ "${eval_script[0]}" != "null" ]]; then
    run_step "$OUTPUT/eval.log" "$PYTHON" "${eval_script[@]}" \
        --model_path "$model_path" --save_dir "$OUTPUT/eval"
fi

# ---- export
inference_dir=$(value Global.save_inference_dir)
read -ra export_script <<< "$(value norm_export)"
run_step "$OUTPUT/export.log" "$PYTHON" "${export_script[@]}" \
    --model_path "$model_path" --save_dir "$inference_dir"

# ---- inference over the flag combinations
IFS='|' read -ra use_gpu_list <<< "$(value --use_gpu)"
IFS='|' read -ra mkldnn_list <<< "$(value --enable_mkldnn)"
IFS='|' read -ra threads_list <<< "$(value --cpu_threads)"
IFS='|' read -ra batch_list <<< "$(value --batch_size)"
IFS='|' read -ra trt_list <<< "$(value --use_tensorrt)"
IFS='|' read -ra precision_list <<< "$(value --precision)"
looped="--use_gpu --enable_mkldnn --cpu_threads --batch_size --use_tensorrt --precision"
infer_flags=$(func_flags_of_section "$CONFIG" infer_params "$MODE" "$looped")
read -ra infer_script <<< "$(value inference)"
has_gpu=no
"$PYTHON" -c "import sys, paddle; sys.exit(0 if paddle.device.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0 else 1)" 2>/dev/null && has_gpu=yes

for use_gpu in "${use_gpu_list[@]}"; do
    if [[ "${use_gpu,,}" == "true" ]]; then
        if [[ $has_gpu == no ]]; then
            echo "Skipped all --use_gpu=True combinations: this Paddle has no usable GPU" | tee -a "$RESULTS"
            continue
        fi
        for trt in "${trt_list[@]}"; do
            for precision in "${precision_list[@]}"; do
                if [[ "${trt,,}" != "true" && "$precision" != "fp32" ]]; then
                    continue  # fp16 / int8 need TensorRT
                fi
                for batch in "${batch_list[@]}"; do
                    name=gpu_usetrt_${trt}_precision_${precision}_batchsize_${batch}
                    run_step "$OUTPUT/python_infer_$name.log" "$PYTHON" "${infer_script[@]}" \
                        $infer_flags --use_gpu=True --use_tensorrt="$trt" --precision="$precision" \
                        --batch_size="$batch" --save_dir="$OUTPUT/infer_$name"
                done
            done
        done
    else
        for mkldnn in "${mkldnn_list[@]}"; do
            for threads in "${threads_list[@]}"; do
                for precision in "${precision_list[@]}"; do
                    if [[ "$precision" == "bf16" && "${mkldnn,,}" != "true" ]] || \
                       [[ "$precision" == "fp16" || "$precision" == "int8" ]]; then
                        continue  # bf16 needs oneDNN; fp16 / int8 need TensorRT on a GPU
                    fi
                    for batch in "${batch_list[@]}"; do
                        name=cpu_usemkldnn_${mkldnn}_threads_${threads}_precision_${precision}_batchsize_${batch}
                        run_step "$OUTPUT/python_infer_$name.log" "$PYTHON" "${infer_script[@]}" \
                            $infer_flags --use_gpu=False --enable_mkldnn="$mkldnn" \
                            --cpu_threads="$threads" --precision="$precision" \
                            --batch_size="$batch" --save_dir="$OUTPUT/infer_$name"
                    done
                done
            done
        done
    fi
done

if [[ $failures -gt 0 ]]; then
    echo "$failures step(s) failed; see $RESULTS and the logs beside it" >&2
    exit 1
fi
echo "all steps passed; results in $RESULTS"
