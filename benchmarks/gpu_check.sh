#!/usr/bin/env bash
# One GPU session, prepared to run once (the device tool lends ~15 minutes): the CUDA tests, then
# the GPU throughput benchmarks, then the whole suite with what time is left. Run from the repo root
# with the datasets under gpu/data (caltech20, hymenoptera) and, where the machine lacks them, the
# wheels under .whl. Everything lands in $OUT (log files) and on stdout (a short table at the end).
#   GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh   # a dry run with tiny sizes (any machine)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${GPU_CHECK_SMALL:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
PY=${PY:-python3}
export ADVISOR_CACHE_DIR=/tmp/advisor-cache
DATA=${DATA:-gpu/data/caltech20}
REPEAT=${REPEAT:-16}; COPIES=8; EPOCHS=2; BARE=${BARE:-10}
STEPS=${STEPS:-"tests extract train compile suite"}  # a later, shorter session can run fewer
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
[ -n "${GPU_CHECK_SMALL:-}" ] && { REPEAT=1; COPIES=1; EPOCHS=1; BARE=2; }
BUDGET=${BUDGET:-560}  # seconds for the whole script: each step gets at most what is left
cap() { local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
step() { echo; echo "=== $1 ($(date +%T), ${SECONDS}s)"; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c "import torch, torchvision, timm, pydantic; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'pydantic', pydantic.__version__, 'cuda', torch.cuda.is_available())"
  echo "cores $(nproc)"; } 2>&1 | tee "$OUT/env.txt"

has tests && step "CUDA tests" && timeout $(cap 90) $PY -m pytest -q -p no:cacheprovider tests/test_device_decode.py tests/test_decoded.py \
  "tests/test_probe.py" "tests/test_transferability.py" -k "cuda or device or decoded or gpu" 2>&1 | tail -8 | tee "$OUT/cuda_tests.txt"

has extract && step "extraction throughput (caltech20 x $REPEAT, 224 px)" && timeout $(cap 130) $PY benchmarks/extract_throughput.py $DATA --repeat $REPEAT 2>&1 | grep -v Warning | tee "$OUT/extract.txt"

if has train; then
step "fine-tune throughput (caltech20 x $COPIES copies, 224 px)"
rm -rf /tmp/caltech-big
$PY - "$DATA" /tmp/caltech-big "$COPIES" <<'PYEOF'
import shutil, sys
from pathlib import Path
src, dst, copies = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for f in src.rglob("*.jpg"):
    for c in range(copies):
        out = dst / f.relative_to(src).parent / f"c{c}_{f.name}"
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out)
print("images", sum(1 for _ in dst.rglob("*.jpg")))
PYEOF
timeout $(cap 200) $PY benchmarks/train_throughput.py /tmp/caltech-big --input-size 224 --epochs $EPOCHS --bare-seconds $BARE \
  --variants ${VARIANTS:-cold,warm,off} 2>&1 | grep -v Warning | tee "$OUT/train.txt"
fi
has compile && timeout $(cap 100) $PY benchmarks/train_throughput.py /tmp/caltech-big --input-size 224 --epochs $EPOCHS --bare-seconds 3 \
  --variants warm,compile 2>&1 | grep -v Warning | tee "$OUT/train_compile.txt"

has suite && [ -z "${GPU_CHECK_SMALL:-}" ] && step "whole test suite (what time is left; stops at 2 failures)" && \
  { timeout $(cap 100) $PY -m pytest -v -p no:cacheprovider -n 8 --maxfail=2 --tb=line -W ignore tests > "$OUT/suite_full.txt" 2>&1
    # -v prints each result as it lands, so the failures are named even when the cap cuts the run.
    grep -E "FAILED|ERROR" "$OUT/suite_full.txt" | head -10; tail -3 "$OUT/suite_full.txt"; } | tee "$OUT/suite.txt"

step summary
cat "$OUT/env.txt" "$OUT/cuda_tests.txt" "$OUT/extract.txt" "$OUT/train.txt" "$OUT/train_compile.txt" "$OUT/suite.txt" 2>/dev/null | grep -v "^$"
