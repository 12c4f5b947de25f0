#!/usr/bin/env bash
# Data for the TIPC chain test.
#   lite_train_lite_infer:   a tiny synthetic category written by utils/demo_data.py (offline)
#   whole_train_whole_infer: the real MVTec AD, from the 3rd argument or $MVTEC_ROOT, linked at
#                            test_tipc/data/MVTec (training then downloads ImageNet VGG16 once)
#
#   bash test_tipc/prepare.sh test_tipc/configs/KDAD/train_infer_python.txt lite_train_lite_infer
#   bash test_tipc/prepare.sh test_tipc/configs/KDAD/train_infer_python.txt whole_train_whole_infer /data/MVTec
#
# PYTHON=/path/to/python overrides the config's `python:` line (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
source test_tipc/common_func.sh

CONFIG=${1:?usage: $0 <train_infer_python.txt> <mode> [mvtec_root]}
MODE=${2:?usage: $0 <train_infer_python.txt> <mode> [mvtec_root]}
[[ -f "$CONFIG" ]] || { echo "error: config not found: $CONFIG" >&2; exit 2; }
PYTHON=${PYTHON:-$(func_value_of "$CONFIG" python)}
mkdir -p test_tipc/data

case "$MODE" in
    lite_train_lite_infer)
        rm -rf test_tipc/data/demo
        "$PYTHON" -m utils.demo_data --root test_tipc/data/demo --category demo --size 64 \
            --num_train 8 --num_test_good 2 --num_per_defect 2 --seed 0
        ;;
    whole_train_whole_infer)
        root=${3:-${MVTEC_ROOT:-}}
        if [[ -z "$root" ]]; then
            echo "error: give the MVTec AD folder as 3rd argument or in MVTEC_ROOT" >&2
            exit 2
        fi
        category=$(func_for_mode "$(func_value_of "$CONFIG" --normal_class)" "$MODE")
        if [[ ! -d "$root/$category/train/good" ]]; then
            echo "error: $root/$category/train/good not found: is $root the MVTec AD folder?" >&2
            exit 2
        fi
        ln -sfn "$(cd "$root" && pwd)" test_tipc/data/MVTec
        echo "linked test_tipc/data/MVTec -> $root"
        ;;
    *)
        echo "error: mode must be lite_train_lite_infer or whole_train_whole_infer, got $MODE" >&2
        exit 2
        ;;
esac
