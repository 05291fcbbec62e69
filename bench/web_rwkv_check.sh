#!/bin/sh
# Load `odin export st` in web-rwkv (the WebGPU runtime, through wgpu) and compare its greedy
# tokens with ODIN's int8 engine on the same prompts.
#
# Usage: bench/web_rwkv_check.sh [MODEL_DIR] [MAX_TOKENS]
# Needs a Vulkan, Metal or DX12 device; on a machine without a GPU, Mesa's software Vulkan
# driver works: `apt-get install mesa-vulkan-drivers libvulkan1` (lavapipe).
set -eu
cd "$(dirname "$0")/.."
MODEL=${1:-models/odin-tiny}
N=${2:-32}
OUT=${TMPDIR:-/tmp}/odin-web-rwkv-check
mkdir -p "$OUT"
cargo build --release -q -p odin-cli
ODIN=target/release/odin
$ODIN export st --model "$MODEL" --out "$OUT/model.st"
cargo build --release -q --manifest-path bench/web-rwkv-check/Cargo.toml
set -- "12+34=" "work: 4821+977=" "work: 48+97=" "Solve for x: 6x - 5 = -10x + 59" "Solve for x: 3x + 4 = x - 6" \
  "Solve for x: 7x + 2 = 3x - 10"
bench/web-rwkv-check/target/release/web-rwkv-check "$OUT/model.st" "$MODEL/tokenizer.json" --max-tokens "$N" "$@" \
  > "$OUT/web-rwkv.jsonl"
: > "$OUT/odin.jsonl"
for p in "$@"; do
  $ODIN generate --model "$MODEL" --prompt "$p" --max-tokens "$N" --json --quiet >> "$OUT/odin.jsonl"
done
python3 - "$OUT" <<'PY'
import json, sys
d = sys.argv[1]
web = [json.loads(l) for l in open(f"{d}/web-rwkv.jsonl")]
odin = [json.loads(l) for l in open(f"{d}/odin.jsonl")]
same = 0
for w, o in zip(web, odin):
    assert w["prompt_ids"] == o["prompt_ids"], (w["prompt_ids"], o["prompt_ids"])
    ids = [t for t in w["ids"] if t != 1]  # web-rwkv keeps the end-of-sequence token; odin stops before it
    ok = ids == o["ids"]
    same += ok
    at = next((i for i, (a, b) in enumerate(zip(ids, o["ids"])) if a != b), None)
    print(f"{'same' if ok else 'DIFFERENT'}  {len(o['ids']):3} tokens  {w['prompt']!r} -> {o['text']!r}"
          + ("" if ok else f"  (first difference at token {at}; web-rwkv: {w['text']!r})"))
print(f"web-rwkv ({web[0]['adapter']}, {web[0]['activations']} activations) and odin int8 agree on "
      f"{same}/{len(web)} prompts")
sys.exit(0 if same == len(web) else 1)
PY
