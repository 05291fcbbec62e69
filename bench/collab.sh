#!/usr/bin/env bash
# Training together: the Byzantine and churn tables of BENCHMARKS.md (issue 25).
#
#   bench/collab.sh OUT_DIR [CONFIG]
#
# Runs `odin swarm --train --nodes 4 --json` on CONFIG (default configs/collab-demo.toml) clean,
# with one member of four sending scaled (x100), sign-flipped and ALIE updates under centered
# clipping and under the plain mean, and with a member killed after every round while
# newcomers join. Each run's JSON summary goes to OUT_DIR/NAME.json; a table of final
# held-out losses and bytes is printed at the end. Needs a release build (cargo build --release).
set -euo pipefail
out=${1:?usage: bench/collab.sh OUT_DIR [CONFIG]}
config=${2:-configs/collab-demo.toml}
odin=./target/release/odin
mkdir -p "$out"
mean_config="$out/mean.toml"
# The same run with the plain mean as its aggregator.
sed 's/^aggregator = .*/aggregator = { rule = "mean" }/' "$config" > "$mean_config"
sed -i "s|^train = \"|train = \"$(cd "$(dirname "$config")" && pwd)/|" "$mean_config"
run() {
  local name=$1; shift
  if [ -s "$out/$name.json" ]; then return; fi
  echo "== $name: $*" >&2
  "$odin" swarm --train --nodes 4 --json --out "$out/members-$name" "$@" | tail -1 > "$out/$name.json"
}
run clean --config "$config"
run scale100-clip --config "$config" --byzantine scale:100
run flip-clip --config "$config" --byzantine flip
run alie-clip --config "$config" --byzantine alie:1
run scale100-mean --config "$mean_config" --byzantine scale:100
run flip-mean --config "$mean_config" --byzantine flip
run alie-mean --config "$mean_config" --byzantine alie:1
run churn --config "$config" --churn
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
clean = json.load(open(os.path.join(out, "clean.json")))["heldout"]
print(f"| run | final held-out loss | vs clean | accepted per round (member 0) | KiB sent per member per round | seconds |")
print("|---|---:|---:|---|---:|---:|")
for name in ["clean", "scale100-clip", "flip-clip", "alie-clip", "scale100-mean", "flip-mean", "alie-mean", "churn"]:
    p = os.path.join(out, name + ".json")
    if not os.path.exists(p):
        continue
    v = json.load(open(p))
    h = v["heldout"]
    acc, kib = [], []
    for r in v["rounds"]:
        reps = r["reports"]
        first = [x["report"] for x in reps if x["member"] == 0]
        if first:
            acc.append(str(first[0]["accepted"]) if not first[0]["skipped"] else "skip")
        kib += [x["report"]["sent"] / 1024 for x in reps]
    kib = sorted(kib)[len(kib) // 2] if kib else float("nan")
    rel = (h / clean - 1) * 100 if h is not None else float("nan")
    print(f"| {name} | {h:.4f} | {rel:+.1f}% | {' '.join(acc)} | {kib:.0f} | {v['seconds']:.0f} |")
PY
