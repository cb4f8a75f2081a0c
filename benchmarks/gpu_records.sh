#!/usr/bin/env bash
# Issue 23's GPU step, one run of at most ~9 minutes on one H100/H200: 224-px full-schedule
# records (every strategy) for the small shared sets, then the shipped forecaster's error on them.
# Run from the repo root with the datasets under gpu/data (hymenoptera, brain-mri, caltech20,
# dtd10, malaria); the records land in $OUT/gpu224.jsonl (resumable: a rerun skips what is there).
#   GPU_RECORDS_SMALL=1 bash benchmarks/gpu_records.sh   # a CPU dry run on generated tiny sets
set -u
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
OUT=${OUT:-/tmp/gpu-records}
mkdir -p "$OUT"
PY=${PY:-python3}
export ADVISOR_CACHE_DIR=${ADVISOR_CACHE_DIR:-/tmp/advisor-cache}
DATA=${DATA:-gpu/data}
SETS=${SETS:-hymenoptera,brain-mri,caltech20,dtd10,malaria}
MINUTES=${MINUTES:-7}  # no new cell starts after this; the forecast step needs well under a minute
EXTRA=()
if [ -n "${GPU_RECORDS_SMALL:-}" ]; then
  DATA=$OUT/tiny; SETS=tiny-a,tiny-b; EXTRA=(--phases full224 --epochs 1 --sample-size 16)
  $PY - "$DATA" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for s, name in enumerate(("tiny-a", "tiny-b")):
    for split, n in (("train", 6), ("val", 4)):
        for c in range(2):
            d = Path(sys.argv[1]) / name / split / f"class{c}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = np.array([60 + 120 * c, 90 + 40 * s, 200 - 100 * c], dtype=np.float32)
                arr = np.clip(base + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
PYEOF
  DEVICE=${DEVICE:-cpu}
else
  EXTRA=(--phases full224)
  DEVICE=${DEVICE:-cuda}
fi
echo "=== records: $SETS at 224 px, full schedule, on $DEVICE ($(date +%T))"
$PY benchmarks/records.py --data "$DATA" --datasets "$SETS" --device "$DEVICE" --out "$OUT/gpu224.jsonl" \
  --hours "$(echo "$MINUTES / 60" | bc -l)" --cache-dir "$ADVISOR_CACHE_DIR" "${EXTRA[@]}" 2>&1 | grep -v Warning
echo "=== forecast error on these cells (shipped track record, each cell's dataset left out) ($(date +%T))"
$PY benchmarks/policy.py --forecast-on "$OUT/gpu224.jsonl" 2>&1 | tee "$OUT/forecast.txt"
