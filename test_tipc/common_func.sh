#!/usr/bin/env bash
# Reading the train_infer_python.txt format: `key:value` lines, values either one setting,
# a list to loop over (`True|False`), or one value per mode (`lite_train_lite_infer=1|...`).

# The value of the first line whose key is exactly $2, in config file $1.
func_value_of() {
    awk -v key="$2" 'index($0, key ":") == 1 { print substr($0, length(key) + 2); exit }' "$1"
}

# $1 resolved for mode $2: `mode=value|other=value` gives that mode's value, else $1 unchanged.
func_for_mode() {
    local value=$1 mode=$2 item
    if [[ "$value" =~ ^(lite_train_lite_infer|whole_train_whole_infer|lite_train_whole_infer|whole_infer|whole_train_lite_infer)= ]]; then
        IFS='|' read -ra items <<< "$value"
        for item in "${items[@]}"; do
            if [[ "$item" == "$mode="* ]]; then
                echo "${item#*=}"
                return
            fi
        done
        echo "null"
        return
    fi
    echo "$value"
}

# Lines `-key:value` (keys starting with '-') between the section header $2 and the next
# `===` header, as `key=value` flags for mode $3; null values and the keys listed in $4
# (space-separated, e.g. the ones a caller loops over) are left out.
func_flags_of_section() {
    local config=$1 section=$2 mode=$3 skip=" ${4:-} " key value
    while IFS= read -r line; do
        key=${line%%:*}
        value=$(func_for_mode "${line#*:}" "$mode")
        if [[ "$key" == -* && "$value" != "null" && "$skip" != *" $key "* ]]; then
            printf '%s=%s ' "$key" "$value"
        fi
    done < <(awk -v section="$section" '/^=====/ { inside = index($0, section) > 0; next }
                                          inside { print }' "$config")
}

# Append one `Run successfully` / `Run failed` line for a finished command to the results log.
func_status_check() {
    local status=$1 command=$2 results=$3
    if [[ $status -eq 0 ]]; then
        echo "Run successfully with command - ${command} !" | tee -a "$results"
    else
        echo "Run failed with command - ${command} !" | tee -a "$results"
    fi
}
