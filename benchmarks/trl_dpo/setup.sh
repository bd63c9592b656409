#!/usr/bin/env bash
# Benchmark environment: a venv that sees the system packages (torch, transformers, accelerate,
# alignlab) and adds TRL 1.16.0 on top, without letting pip replace torch or transformers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python3 -m venv --system-site-packages "$venv"
# Constraints pin what is already installed, so TRL cannot pull a different torch/transformers.
constraints="$(mktemp)"
python3 - > "$constraints" <<'PY'
from importlib.metadata import version
for name in ("torch", "transformers", "accelerate", "datasets"):
    print(f"{name}=={version(name)}")
PY
"$venv/bin/pip" install --quiet -c "$constraints" "trl==1.16.0"
rm -f "$constraints"
"$venv/bin/python" - <<'PY'
import torch, transformers, trl, accelerate
print(f"trl {trl.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"accelerate {accelerate.__version__}")
PY
