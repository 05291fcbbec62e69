#!/usr/bin/env bash
# Training speed, side by side: `odin train` against the PyTorch anchor (bench/train_torch.py)
# on the same RWKV-6 config, batch, sequence length and thread count, in one run.
#
#   bench/train_speed.sh [MODEL_CONFIG] [ROWS] [SEQ_LEN] [THREADS] [STEPS]
#
# Needs a release build (cargo build --release -p odin-cli) and, for the anchor, PyTorch in
# .venv-bench (python3 -m venv .venv-bench && .venv-bench/bin/pip install torch numpy).
# ODIN=path/to/odin picks another build (for A/B runs). Both figures are rows * seq_len / median step time, after 2 warm-up steps.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/odin-tiny.json}
ROWS=${2:-16}
SEQ=${3:-256}
THREADS=${4:-2}
STEPS=${5:-12}
ODIN=${ODIN:-target/release/odin}
PY=${PYTHON:-.venv-bench/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$CONFIG")

"$ODIN" data build --preset tiny --seed 1 --out "$WORK/data" >/dev/null 2>&1
"$ODIN" tokenizer train --data "$WORK/data" --vocab "$VOCAB" --out "$WORK/data/tokenizer.json" >/dev/null 2>&1
cat > "$WORK/bench.toml" <<TOML
seed = 1
out = "$WORK/run"
[model]
config = "$PWD/$CONFIG"
[data]
dir = "$WORK/data"
tokenizer = "$WORK/data/tokenizer.json"
[optim]
lr = 1e-3
min_lr = 1e-4
warmup_steps = 1
weight_decay = 0.01
clip = 1.0
[batch]
rows = $ROWS
seq_len = $SEQ
[run]
steps = $((STEPS + 2))
checkpoint_every = 100000
log_every = 1
TOML
RAYON_NUM_THREADS=$THREADS "$ODIN" train --config "$WORK/bench.toml" --quiet >/dev/null 2>&1
ODIN_JSON=$(python3 - "$WORK/run/metrics.jsonl" "$ROWS" "$SEQ" "$THREADS" <<'PY'
import json, statistics, sys
lines = [json.loads(l) for l in open(sys.argv[1])][2:]
rows, seq, threads = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
med = statistics.median(l["seconds"] for l in lines)
print(json.dumps({"impl": "odin", "threads": threads, "rows": rows, "seq_len": seq,
                  "median_step_s": med, "tokens_per_s": rows * seq / med}))
PY
)
echo "$ODIN_JSON"
if [ -x "$PY" ] && "$PY" -c "import torch" 2>/dev/null; then
  TORCH_JSON=$("$PY" bench/train_torch.py --config "$CONFIG" --rows "$ROWS" --seq-len "$SEQ" \
    --threads "$THREADS" --steps "$STEPS" --warmup 2)
  echo "$TORCH_JSON"
  python3 -c "import json,sys; a=json.loads(sys.argv[1]); b=json.loads(sys.argv[2]); print(f'odin / pytorch tokens/s: {a[\"tokens_per_s\"]/b[\"tokens_per_s\"]:.2f}x')" "$ODIN_JSON" "$TORCH_JSON"
else
  echo "PyTorch not found at $PY: anchor skipped" >&2
fi
