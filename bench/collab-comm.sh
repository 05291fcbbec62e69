#!/usr/bin/env bash
# Training together, the communication benchmark of BENCHMARKS.md (issue 25): odin-tiny's
# configuration trained from scratch by 4 members in DiLoCo rounds (configs/collab-tiny.toml)
# against one machine on the same total tokens (configs/train-collab-tiny-1m.toml; the swarm
# builds the dataset both use), one after the other so neither slows the other, then both loss curves on one PNG.
#
#   bench/collab-comm.sh OUT_DIR
#
# Needs a release build (cargo build --release). Prints each run's final held-out loss (16
# fixed batches of the test split) and the bytes each member sent per round.
set -euo pipefail
out=${1:?usage: bench/collab-comm.sh OUT_DIR}
odin=./target/release/odin
mkdir -p "$out"
if [ ! -s "$out/together.json" ]; then
  "$odin" swarm --train --nodes 4 --json --heldout-batches 16 --config configs/collab-tiny.toml \
    --out "$out/members" | tail -1 > "$out/together.json"
fi
# The same run with the plain mean as its aggregator (the only change).
if [ ! -s "$out/together-mean.json" ]; then
  sed 's/^aggregator = .*/aggregator = { rule = "mean" }/' configs/collab-tiny.toml > "$out/collab-tiny-mean.toml"
  sed -i "s|^train = \"|train = \"$(pwd)/configs/|" "$out/collab-tiny-mean.toml"
  "$odin" swarm --train --nodes 4 --json --heldout-batches 16 --config "$out/collab-tiny-mean.toml" \
    --out "$out/members-mean" | tail -1 > "$out/together-mean.json"
fi
if [ ! -s "$out/one-machine.log" ]; then
  rm -rf runs/collab-tiny-1m
  "$odin" train --config configs/train-collab-tiny-1m.toml --heldout-batches 16 --quiet 2>&1 | tee "$out/one-machine.log"
  cp runs/collab-tiny-1m/metrics.jsonl "$out/one-machine.jsonl"
fi
"$odin" curves --title "odin-tiny: 4 members in DiLoCo rounds vs one machine, same tokens" \
  --out "$out/collab-tiny.png" "one machine=$out/one-machine.jsonl" "4 members=$out/together.json"
grep -i "held-out" "$out/one-machine.log" || true
python3 - "$out/together.json" "$out/together-mean.json" <<'PY'
import json, sys
for path in sys.argv[1:]:
  v = json.load(open(path))
  print(path, "held-out", v["heldout"], "agree", v.get("agree"), "seconds", v["seconds"])
  for r in v["rounds"]:
    print("  round", r.get("round"), [(x["member"], x["report"]["sent"], x["report"]["accepted"]) for x in r["reports"]])
PY
