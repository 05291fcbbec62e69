#!/usr/bin/env bash
# 3 node processes vs 1 on loopback, and one machine without a network (odin generate):
# decode tokens/s, overhead per hop (client round trip minus server compute) and bytes on
# the wire per hop per token, median of RUNS runs, each configuration interleaved with the others.
# Usage: bench/swarm_speed.sh MODEL_DIR [RUNS] [MAX_TOKENS]
set -euo pipefail
model=${1:?model directory}; runs=${2:-5}; max=${3:-64}
odin=${ODIN:-target/release/odin}
prompt="Solve for x: 6x - 5 = -10x + 59"
out=$(mktemp -d)
for r in $(seq "$runs"); do
  "$odin" generate --model "$model" --prompt "$prompt" --max-tokens "$max" --json --quiet > "$out/local-$r.json"
  for wire in int8 f32; do
    for n in 1 3; do
      "$odin" swarm --nodes "$n" --model "$model" --prompt "$prompt" --max-tokens "$max" --wire "$wire" --json \
        2>/dev/null > "$out/swarm-$n-$wire-$r.json"
    done
  done
done
python3 - "$out" "$runs" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
med = statistics.median
local = [json.load(open(f"{out}/local-{r}.json")) for r in range(1, runs + 1)]
lt = med(l["decode_tok_s"] for l in local)
print(f"| configuration | decode tok/s | vs 1 node | vs local | overhead per hop (µs) | bytes per hop per token |")
print(f"|---|---:|---:|---:|---:|---:|")
print(f"| local `odin generate` | {lt:.0f} | | 1.00x | | |")
one = {}
for wire in ["int8", "f32"]:
    for n in [1, 3]:
        rs = [json.load(open(f"{out}/swarm-{n}-{wire}-{r}.json")) for r in range(1, runs + 1)]
        assert all(x["ids"] == local[0]["ids"] for x in rs) or wire == "int8", "f32 wire must match local"
        t = med(x["decode_tok_s"] for x in rs)
        ov = med(med(h["mean_overhead_us"] for h in x["route"]) for x in rs)
        b = med(med(h["bytes_per_token"] for h in x["route"]) for x in rs)
        one.setdefault(wire, t) if n == 1 else None
        print(f"| {n} node{'s' if n > 1 else ''}, {wire} wire | {t:.0f} | {t / one[wire]:.2f}x | {t / lt:.2f}x | {ov:.0f} | {b:.0f} |")
same = sum(json.load(open(f"{out}/swarm-3-int8-{r}.json"))["ids"] == local[0]["ids"] for r in range(1, runs + 1))
print(f"\nint8 wire, 3 nodes: tokens identical to local in {same}/{runs} runs")
PY
