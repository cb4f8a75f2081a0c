#!/usr/bin/env bash
# One GPU session, prepared to run once (the device tool lends ~15 minutes), at most ~9 minutes, in
# order of what the GPU issue needs most: the bare model under every setting (bare_speed.py), the
# stage profile of a training step (stage_profile.py), extraction cold/warm, the fine-tune end to
# end, accuracy at the fastest batch against 32 (batch_check.py), the CUDA tests, camera-size JPEGs
# on nvJPEG against the CPU workers' reduced decode (decode_scale.py), torch.compile, and the whole
# suite with what time is left. Run from the repo root with the datasets under gpu/data
# (caltech20, hymenoptera) and, where the machine lacks them, the wheels under .whl. Everything
# lands in $OUT (a log file per step, and gpu_throughput_<gpu>.txt: the lot, for docs/) and on stdout.
# STEPS picks steps (a rerun skips none: each step is short and writes only its own file).
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
STEPS=${STEPS:-"bare profile extract train batch tests photos compile suite"}  # a later, shorter session can run fewer
BATCHES=${BATCHES:-32,128,256}; SIZE=224; PSTEPS=12; BSETS=${BSETS:-"gpu/data/hymenoptera gpu/data/caltech20"}; BIG=${BIG:-128}
PHOTOS=${PHOTOS:-gpu/data/hymenoptera}; SIDES="3024 1024"; PLIMIT=128; PREPEAT=4; PBATCH=64
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
if [ -n "${GPU_CHECK_SMALL:-}" ]; then
  REPEAT=1; COPIES=1; EPOCHS=1; BARE=2; BATCHES=4; SIZE=32; PSTEPS=1; BSETS=$DATA; BIG=8
  PHOTOS=$DATA; SIDES=64; PLIMIT=8; PREPEAT=1; PBATCH=4
fi
BUDGET=${BUDGET:-560}  # seconds for the whole script: each step gets at most what is left
cap() { local left=$((BUDGET - SECONDS)); [ "$left" -lt "$1" ] && echo $((left > 5 ? left : 5)) || echo "$1"; }
step() { echo; echo "=== $1 ($(date +%T), ${SECONDS}s)"; }

step environment
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -3
  $PY -c "import torch, torchvision, timm, pydantic; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'timm', timm.__version__, 'pydantic', pydantic.__version__, 'cuda', torch.cuda.is_available())"
  echo "cores $(nproc)"; } 2>&1 | tee "$OUT/env.txt"

has bare && step "bare model, every setting ($SIZE px)" && timeout $(cap 110) $PY benchmarks/bare_speed.py --input-size $SIZE \
  --batches $BATCHES --seconds $([ -n "${GPU_CHECK_SMALL:-}" ] && echo 0.1 || echo 1.0) --json "$OUT/bare.json" 2>&1 | grep -v Warning | tee "$OUT/bare.txt"

has profile && step "stage profile of a training step ($SIZE px)" && timeout $(cap 90) $PY benchmarks/stage_profile.py $DATA \
  --input-size $SIZE --batch-size $([ -n "${GPU_CHECK_SMALL:-}" ] && echo 4 || echo 64) --steps $PSTEPS --json "$OUT/profile.json" \
  2>&1 | grep -v Warning | tee "$OUT/profile.txt"

has tests && step "CUDA tests" && timeout $(cap 90) $PY -m pytest -q -p no:cacheprovider tests/test_device_decode.py tests/test_decoded.py \
  "tests/test_probe.py" "tests/test_transferability.py" tests/test_evaluate.py -k "cuda or device or decoded or gpu" 2>&1 | tail -8 | tee "$OUT/cuda_tests.txt"

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
has batch && step "accuracy at batch $BIG against 32 (full fine-tune)" && timeout $(cap 150) $PY benchmarks/batch_check.py $BSETS \
  --batch $BIG --input-size $SIZE $([ -n "${GPU_CHECK_SMALL:-}" ] && echo "--epochs 1") 2>&1 | grep -v Warning | tee "$OUT/batch.txt"

has photos && step "camera-size JPEGs: CPU workers' reduced decode against nvJPEG decoding every pixel" && for side in $SIDES; do
  timeout $(cap 45) $PY benchmarks/decode_scale.py $PHOTOS --upscale-to $side --limit $PLIMIT --throughput \
    --batch-size $PBATCH --repeat $PREPEAT --input-size $SIZE 2>&1 | grep -v Warning; done | tee "$OUT/photos.txt"

has compile && timeout $(cap 100) $PY benchmarks/train_throughput.py /tmp/caltech-big --input-size 224 --epochs $EPOCHS --bare-seconds 3 \
  --variants warm,compile 2>&1 | grep -v Warning | tee "$OUT/train_compile.txt"

has suite && [ -z "${GPU_CHECK_SMALL:-}" ] && step "whole test suite (what time is left; stops at 2 failures)" && \
  { timeout $(cap 100) $PY -m pytest -v -p no:cacheprovider -n 8 --maxfail=2 --tb=line -W ignore tests > "$OUT/suite_full.txt" 2>&1
    # -v prints each result as it lands, so the failures are named even when the cap cuts the run.
    grep -E "FAILED|ERROR" "$OUT/suite_full.txt" | head -10; tail -3 "$OUT/suite_full.txt"; } | tee "$OUT/suite.txt"

step summary
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | grep -oiE "h100|h200|a100|l4|[a-z]+[0-9]+" | head -1 | tr A-Z a-z)
DOC="$OUT/gpu_throughput_${GPU:-cpu}.txt"
{ echo "# benchmarks/gpu_check.sh, $(date -u +%F), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  for f in env bare profile extract train batch cuda_tests photos train_compile suite; do
    [ -s "$OUT/$f.txt" ] && { echo "### $f"; grep -v "^$" "$OUT/$f.txt"; }
  done; } > "$DOC"
cat "$DOC"
