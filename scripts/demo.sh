#!/usr/bin/env bash
# The README's main command: the whole method end to end on CPU in minutes, with no dataset and no download.
#
#   bash scripts/demo.sh [OUT]          (OUT defaults to ./demo_output; --help prints this)
#
# 1. installs what is missing (scripts/install.sh);
# 2. builds hazy/clear pairs from the photos bundled with scikit-image (scripts/make_demo_data.py; the Middlebury
#    motorcycle uses its real depth map), one photo held out for validation;
# 3. trains MixCLDehazeNet-T through the real `python mixcl_arch/train.py -opt options/train/..._demo.yml`;
# 4. runs the inference CLI (`python -m mixcl_arch.dehaze`) on the held-out hazy images;
# 5. prints PSNR/SSIM of the hazy input and of the output against the ground truth and writes
#    OUT/comparison.png (hazy | dehazed | GT).
#
# Environment:
#   DEMO_ITERS=N            training iterations (default 300; CI uses a handful)
#   DEMO_THREADS=N          torch CPU threads (default: the idle cores, at least 1)
#   MIXCL_CLIP_WEIGHTS=F    a local open_clip ViT-B-32 weights file (open_clip_model.safetensors of
#                           timm/vit_base_patch32_clip_224.openai; TorchScript archives such as OpenAI's ViT-B-32.pt
#                           are code and are refused, see README "Safety"): condition on real CLIP features instead
#                           of the oracle domain labels
#   DEMO_SKIP_INSTALL=1     do not run scripts/install.sh
#   PYTHON=python3          the interpreter
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }  # the comment above
case "${1:-}" in
  -h | --help) usage; exit 0 ;;
  -*) printf 'scripts/demo.sh: unknown option %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
esac
if [ $# -gt 1 ]; then
  printf 'scripts/demo.sh: one output folder at most, got %s arguments\n\n' "$#" >&2; usage >&2; exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-${DEMO_OUT:-$REPO/demo_output}}
ITERS=${DEMO_ITERS:-300}
PY=${PYTHON:-python3}
NAME=MixCLDehazeNet_T_demo
OPT="$REPO/options/train/train_MixCLDehazeNet_T_demo.yml"
T0=$(date +%s)

say() { printf '\n[demo] %s\n' "$*"; }

case "$ITERS" in '' | *[!0-9]*) echo "DEMO_ITERS must be a positive integer, got '$ITERS'" >&2; exit 2 ;; esac
[ "$ITERS" -ge 1 ] || { echo "DEMO_ITERS must be >= 1" >&2; exit 2; }

cd "$REPO"
if [ "${DEMO_SKIP_INSTALL:-0}" != 1 ]; then
  say "1/5 checking the installation (scripts/install.sh)"
  PYTHON="$PY" bash scripts/install.sh
fi

# the output folder is ours only if empty or made by an earlier demo
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -n "$(ls -A "$OUT")" ] && [ ! -f "$OUT/.mixcl_demo" ]; then
  echo "$OUT is not empty and was not made by scripts/demo.sh: pass another folder" >&2
  exit 2
fi
touch "$OUT/.mixcl_demo"
rm -rf "$OUT/experiments/$NAME" "$OUT/dehazed" "$OUT/tb_logger" "$OUT/comparison.png" "$OUT/metrics.json"

# CPU threads: oversubscribed OpenMP threads make training many times slower on a busy machine
if [ -z "${DEMO_THREADS:-}" ]; then
  NCPU=$("$PY" -c 'import os; print(len(os.sched_getaffinity(0)))')
  LOAD=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo 0)
  DEMO_THREADS=$("$PY" -c "print(max(1, $NCPU - int(round($LOAD))))")
fi
export OMP_NUM_THREADS=$DEMO_THREADS MKL_NUM_THREADS=$DEMO_THREADS
say "using $DEMO_THREADS CPU thread(s); $ITERS training iterations"

say "2/5 building the demo dataset from scikit-image photos -> $OUT/data"
"$PY" scripts/make_demo_data.py --out "$OUT/data" > "$OUT/make_demo_data.json"
"$PY" - "$OUT/make_demo_data.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))['splits']
print(f"[demo] train: {s['train']['images']} photos, {s['train']['pairs']} hazy/clear pairs "
      f"({s['train']['depth_files']} with a real depth map); held out: {', '.join(s['test']['names'])} "
      f"({s['test']['pairs']} pairs)")
EOF

# val/save frequencies past the end: BasicSR validates and saves net_g_latest.pth once when training ends
FORCE=("train:total_iter=$ITERS" "train:scheduler:periods=[$ITERS]" "val:val_freq=$(( ITERS + 1 ))"
       "logger:save_checkpoint_freq=$(( ITERS + 1 ))" "logger:print_freq=$(( ITERS < 50 ? 1 : 50 ))")
if [ -n "${MIXCL_CLIP_WEIGHTS:-}" ]; then
  [ -f "$MIXCL_CLIP_WEIGHTS" ] || { echo "MIXCL_CLIP_WEIGHTS=$MIXCL_CLIP_WEIGHTS: no such file" >&2; exit 2; }
  say "CLIP weights given ($MIXCL_CLIP_WEIGHTS): extracting real CLIP features (scripts/extract_clip_features.py)"
  for split in train test; do
    "$PY" scripts/extract_clip_features.py -opt "$OPT" --dataroot "$OUT/data/$split/hazy" \
      --out "$OUT/data/$split/clip_features.pt" --pretrained "$MIXCL_CLIP_WEIGHTS"
  done
  FORCE+=("clip:pretrained=$MIXCL_CLIP_WEIGHTS" "conditioning:source=store"
          "datasets:train:feature_store=data/train/clip_features.pt"
          "datasets:val:feature_store=data/test/clip_features.pt")
  COND="real CLIP features ($MIXCL_CLIP_WEIGHTS)"
  CLI_COND=(--clip-pretrained "$MIXCL_CLIP_WEIGHTS")
else
  COND="STAND-IN: oracle domain labels from meta.csv (no CLIP weights offline; this is NOT CLIP)"
  say "NOTE: no CLIP weights are available offline. The network is conditioned on a clearly labelled stand-in:"
  echo "      the oracle domain label (indoor/outdoor) of each image from data/*/meta.csv, not on CLIP's zero-shot"
  echo "      prediction. Set MIXCL_CLIP_WEIGHTS=/path/to/open_clip_model.safetensors (ViT-B-32) to use real CLIP."
  # the CLI has no labels: give it the held-out split's (single) oracle domain and the dataset's stand-in vectors
  TEST_DOMAIN=$("$PY" - "$OUT/data/test/meta.csv" <<'EOF'
import csv, sys
doms = sorted({r['domain'] for r in csv.DictReader(open(sys.argv[1]))})
if len(doms) != 1:
    sys.exit(f'the demo expects one domain in {sys.argv[1]}, found {doms}')
print(doms[0])
EOF
)
  "$PY" scripts/make_demo_data.py --standin-store "$OUT/data/oracle_standin_features.pt"
  CLI_COND=(--cond-fallback "$TEST_DOMAIN" --feature-store "$OUT/data/oracle_standin_features.pt")
fi

say "3/5 training MixCLDehazeNet-T: python mixcl_arch/train.py -opt $OPT (log: $OUT/experiments/$NAME)"
T_TRAIN=$(date +%s)
(cd "$OUT" && "$PY" "$REPO/mixcl_arch/train.py" -opt "$OPT" --force_yml "${FORCE[@]}") > "$OUT/train.log" 2>&1 || {
  tail -n 40 "$OUT/train.log" >&2
  echo "[demo] training failed, full log: $OUT/train.log" >&2
  exit 1
}
T_TRAIN=$(( $(date +%s) - T_TRAIN ))
grep -E "Validation|# (psnr|ssim)" "$OUT/train.log" | tail -n 3 || true
WEIGHTS="$OUT/experiments/$NAME/models/net_g_latest.pth"
[ -f "$WEIGHTS" ] || { echo "[demo] no $WEIGHTS after training (see $OUT/train.log)" >&2; exit 1; }

say "4/5 inference CLI on the held-out hazy images: python -m mixcl_arch.dehaze"
# --backend torch: for three images the one-time ONNX export (the CPU default) would cost more than it saves
"$PY" -m mixcl_arch.dehaze -i "$OUT/data/test/hazy" -o "$OUT/dehazed" --weights "$WEIGHTS" --opt "$OPT" \
  --device cpu --backend torch --tile 0 --ext png "${CLI_COND[@]}" > "$OUT/dehaze.log" 2>&1 || {
  tail -n 30 "$OUT/dehaze.log" >&2
  echo "[demo] inference failed, full log: $OUT/dehaze.log" >&2
  exit 1
}

say "5/5 metrics against the ground truth and comparison image"
"$PY" scripts/make_demo_data.py --out "$OUT/data" --report "$OUT/dehazed" --report-out "$OUT" > "$OUT/report.json"
TOTAL=$(( $(date +%s) - T0 ))
"$PY" - "$OUT/metrics.json" "$COND" "$ITERS" "$T_TRAIN" "$TOTAL" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
cond, iters, t_train, total = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
for r in m['per_image']:
    print(f"  {r['hazy']:<32} hazy {r['psnr_hazy']:6.2f} dB / SSIM {r['ssim_hazy']:.4f}   ->   "
          f"dehazed {r['psnr_dehazed']:6.2f} dB / SSIM {r['ssim_dehazed']:.4f}")
a = m['mean']
print(f"  {'mean':<32} hazy {a['psnr_hazy']:6.2f} dB / SSIM {a['ssim_hazy']:.4f}   ->   "
      f"dehazed {a['psnr_dehazed']:6.2f} dB / SSIM {a['ssim_dehazed']:.4f}")
print(f"\n[demo] conditioning: {cond}")
print(f"[demo] {iters} iterations trained in {t_train} s; whole demo {total} s")
EOF
cat <<EOF

[demo] results:
  comparison image (hazy | dehazed | GT): $OUT/comparison.png
  metrics:                               $OUT/metrics.json
  dehazed images:                        $OUT/dehazed/
  trained weights:                       $WEIGHTS
  training log / validation images:      $OUT/train.log, $OUT/experiments/$NAME/
  demo dataset:                          $OUT/data/{train,test}/{hazy,GT} + meta.csv
EOF
