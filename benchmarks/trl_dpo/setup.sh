#!/usr/bin/env bash
# Benchmark environment: a venv that sees the system packages (torch, transformers, accelerate,
# alignlab) and adds TRL 1.16.0 on top, without letting pip replace torch or transformers.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python3 -m venv --system-site-packages "$venv"
# When python3 is itself a venv (e.g. the project's .venv), --system-site-packages sees only the base
# interpreter's packages; link the invoking environment's site-packages too (addsitedir, so its own
# .pth files, such as alignlab's editable install, are processed).
parent_site="$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
venv_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "$parent_site" != "$venv_site" ] && ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    echo "import site; site.addsitedir('$parent_site')" > "$venv_site/_alignlab_parent_env.pth"
fi
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
