#!/usr/bin/env bash
# The whole reliability campaign (issue 19), one part after the other, from the repository root:
#   bash benchmarks/reliability/campaign.sh            # everything (about 1 h on 2 quiet cores)
#   SKIP_SMOLLM2=1 bash benchmarks/reliability/campaign.sh   # without the SmolLM2 injection run
# Each part rewrites its own <part>.json / <part>.md here; README.md summarises them.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
here=benchmarks/reliability

# Parts that need the gym: the league base (gym + SFT) and the gym feedback model.
[ -d runs/league/sft/model ] || alignlab run benchmarks/league/base.yaml
[ -d runs/cai/feedback/model ] || alignlab gym feedback --gym runs/league/gym --out runs/cai/feedback

python "$here/crash.py"                                   # kill -9 anywhere, resume, compare
python "$here/malformed.py"                               # the malformed-input corpus
python "$here/nonfinite.py"                               # NaN / inf injection per trainer
python "$here/faults.py"                                  # HTTP judge faults, disk full, unwritable
python "$here/injection.py" run --judge gym --n 300 --max-tokens 256 --chunk 64
if [ -z "${SKIP_SMOLLM2:-}" ]; then
    python "$here/injection.py" run --judge smollm2 --n 40 --max-tokens 320 --chunk 4 \
        --guards none,escape+mask,all
fi
python "$here/injection.py" collect
python "$here/load.py" --pairs 30000 --iterations 2000   # long label job + long online run
