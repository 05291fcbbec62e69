#!/usr/bin/env bash
# 3 node processes vs 1 on loopback, and one machine without a network (odin generate):
# decode tokens/s, overhead per hop and per token, and bytes on the wire per hop per token,
# median of RUNS runs, each configuration interleaved with the others. 3-node runs go both ways
# a step can travel: servers pushing along the chain (the default) and the client relaying.
# Overhead per token is the decode step's time at the client minus every hop's compute; per hop
# it is that split over the hops (see HopStats in crates/node/src/client.rs).
# Usage: bench/swarm_speed.sh MODEL_DIR [RUNS] [MAX_TOKENS]
set -euo pipefail
model=${1:?model directory}; runs=${2:-5}; max=${3:-64}
odin=${ODIN:-target/release/odin}
prompt="Solve for x: 6x - 5 = -10x + 59"
out=$(mktemp -d)
configs="1-int8-chain 3-int8-chain 3-int8-client 1-f32-chain 3-f32-chain 3-f32-client"
for r in $(seq "$runs"); do
  "$odin" generate --model "$model" --prompt "$prompt" --max-tokens "$max" --json --quiet > "$out/local-$r.json"
  for c in $configs; do
    IFS=- read -r n wire relay <<< "$c"
    "$odin" swarm --nodes "$n" --model "$model" --prompt "$prompt" --max-tokens "$max" --wire "$wire" \
      --relay "$relay" --json 2>/dev/null > "$out/swarm-$c-$r.json"
  done
done
python3 - "$out" "$runs" "$configs" <<'PY'
import json, statistics, sys
out, runs, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
med = statistics.median
local = [json.load(open(f"{out}/local-{r}.json")) for r in range(1, runs + 1)]
lt = med(l["decode_tok_s"] for l in local)
print("| configuration | decode tok/s | vs 1 node | vs local | overhead per hop (µs) | overhead per token (µs) | bytes per hop per token |")
print("|---|---:|---:|---:|---:|---:|---:|")
print(f"| local `odin generate` | {lt:.0f} | | 1.00x | | | |")
one = {}
same = {}
for c in configs:
    n, wire, relay = c.split("-")
    rs = [json.load(open(f"{out}/swarm-{c}-{r}.json")) for r in range(1, runs + 1)]
    assert all(x["ids"] == local[0]["ids"] for x in rs) or wire == "int8", f"{c}: f32 wire must match local"
    assert n == "1" or all(x["relay"] == relay for x in rs), f"{c}: ran as {[x['relay'] for x in rs]}"
    t = med(x["decode_tok_s"] for x in rs)
    hop = med(med(h["mean_overhead_us"] for h in x["route"]) for x in rs)
    tok = med(sum(h["mean_overhead_us"] for h in x["route"]) for x in rs)
    b = med(med(h["bytes_per_token"] for h in x["route"]) for x in rs)
    if n == "1":
        one[wire] = t
    name = f"1 node, {wire} wire" if n == "1" else f"{n} nodes, {wire} wire, {relay} relay"
    print(f"| {name} | {t:.0f} | {t / one[wire]:.2f}x | {t / lt:.2f}x | {hop:.0f} | {tok:.0f} | {b:.0f} |")
    if wire == "int8" and n != "1":
        same[c] = sum(x["ids"] == local[0]["ids"] for x in rs)
for c, k in same.items():
    print(f"\n{c}: tokens identical to local in {k}/{runs} runs", end="")
print()
PY
