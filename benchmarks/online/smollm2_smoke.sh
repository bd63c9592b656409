#!/usr/bin/env bash
# SmolLM2-135M-Instruct (LoRA) smoke runs of the self-play and issue-16 methods on real data, each
# under /usr/bin/time -v (wall time, peak RSS). Run from the repository root on a quiet machine:
#   bash benchmarks/online/smollm2_smoke.sh > benchmarks/online/results/smollm2_smoke.txt 2>&1
set -euo pipefail
export OMP_NUM_THREADS=2
timed() {  # timed NAME CMD...: run, then print wall time and peak RSS
  local name=$1; shift
  /usr/bin/time -v "$@" > "/tmp/smoke_$name.log" 2> "/tmp/smoke_$name.time" || {
    tail -20 "/tmp/smoke_$name.log" "/tmp/smoke_$name.time"; exit 1; }
  printf '%s\twall %s\tpeak_rss_kb %s\tload %s\n' "$name" \
    "$(grep 'Elapsed (wall' "/tmp/smoke_$name.time" | awk '{print $NF}')" \
    "$(grep 'Maximum resident' "/tmp/smoke_$name.time" | awk '{print $NF}')" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
}
[ -f runs/smollm2-hh/rm/DONE ] || timed rm alignlab rm --config recipes/smollm2-hh/rm.yaml
for algo in sppo nash_md xpo; do
  rm -rf "runs/smollm2-hh/$algo"
  timed "$algo" alignlab online --config recipes/smollm2-hh/online.yaml algorithm=$algo \
    out=runs/smollm2-hh/$algo
  grep -h '"reward/mean"' "runs/smollm2-hh/$algo/metrics.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("   ", {k: round(v, 4) for k, v in r.items() if k in ("step", "reward/mean", "kl", "pairs",
          "preference_vs_mixture", "policy_beats_reference", "policy/loss", "time/iteration")})'
done
rm -rf runs/smollm2-hh/d2o
timed d2o alignlab run recipes/smollm2-hh/d2o.yaml
python benchmarks/online/gsm8k_rated.py runs/gsm8k-dro/rated.jsonl
rm -rf runs/gsm8k-dro/dro
timed dro alignlab run recipes/gsm8k-verify/dro.yaml
rm -rf runs/smollm2-hh/self_rewarding
timed self_rewarding alignlab run recipes/smollm2-hh/self_rewarding.yaml
python3 -c 'import json; s = json.load(open("runs/smollm2-hh/self_rewarding/sample/summary.json")); print("   ", s)'
for run in runs/smollm2-hh/d2o/d2o runs/gsm8k-dro/dro runs/smollm2-hh/self_rewarding/dpo; do
  echo "$run"; grep -h '"loss"' "$run/metrics.jsonl" | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("   ", {k: round(v, 4) for k, v in r.items() if not isinstance(v, str) and k != "count"})'
done
