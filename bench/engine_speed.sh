#!/usr/bin/env bash
# `odin bench` three times per model (this machine is noisy), each run with
# llama.cpp's llama-bench and the f32 candle path side by side, then the
# median per row and the per-run ratios to llama.cpp.
#   bench/engine_speed.sh LLAMA_BENCH MODEL_DIR...
# LLAMA_BENCH is llama.cpp's llama-bench binary (build llama.cpp with cmake,
# e.g. from the llama-cpp-python sdist's vendor/llama.cpp).
set -euo pipefail
lb=$1; shift
odin=${ODIN:-target/release/odin}
for model in "$@"; do
  runs=()
  for i in 1 2 3; do
    f=$(mktemp)
    "$odin" bench --model "$model" --f32 --llama-bench "$lb" --runs 7 --json > "$f"
    runs+=("$f")
  done
  python3 - "$model" "${runs[@]}" <<'PY'
import json, statistics, sys
model, files = sys.argv[1], sys.argv[2:]
runs = [json.load(open(f)) for f in files]
print(f"\n{model}: prompt {runs[0]['prompt_tokens']}, decode {runs[0]['decode_tokens']}, 3 runs x median of 7")
print("| engine | threads | prefill tok/s | decode tok/s |\n|---|---:|---:|---:|")
keys = [(r["engine"], r["threads"]) for r in runs[0]["rows"]]
for k in keys:
    rows = [next(r for r in run["rows"] if (r["engine"], r["threads"]) == k) for run in runs]
    print(f"| {k[0]} | {k[1]} | {statistics.median(r['prefill_tok_s'] for r in rows):.0f} | {statistics.median(r['decode_tok_s'] for r in rows):.0f} |")
for t in sorted({k[1] for k in keys}):
    dec, dflt = [], []
    for run in runs:
        ours = next(r for r in run["rows"] if r["threads"] == t and r["engine"].startswith("odin"))
        # Against the faster of llama.cpp's two runs (its default mmap, and huge pages as ours).
        llamas = [r for r in run["rows"] if r["threads"] == t and r["engine"].startswith("llama")]
        dec.append(ours["decode_tok_s"] / max(r["decode_tok_s"] for r in llamas))
        dflt.append(ours["decode_tok_s"] / next(r for r in llamas if "mmap" in r["engine"])["decode_tok_s"])
    roof = [next(x for x in run["roofline"] if x["threads"] == t) for run in runs]
    ours = [next(r for r in run["rows"] if r["threads"] == t and r["engine"].startswith("odin"))["decode_tok_s"] for run in runs]
    pct = [100 * o / r["decode_tok_s"] for o, r in zip(ours, roof)]
    print(f"{t} thread(s): decode vs llama.cpp's faster run, per run {', '.join(f'{x:.2f}x' for x in dec)} (median {statistics.median(dec):.2f}x), "
          f"vs its default (mmap) median {statistics.median(dflt):.2f}x; "
          f"roofline {statistics.median(r['bandwidth_gb_s'] for r in roof):.1f} GB/s, int8 decode at {statistics.median(pct):.0f}% of it")
print(f"weights read per token {runs[0]['weights_bytes_per_token']/1e6:.1f} MB; peak RSS {max(r['peak_rss_bytes'] or 0 for r in runs)/1e6:.1f} MB; "
      f"engine file {(runs[0]['engine_file_bytes'] or 0)/1e6:.1f} MB")
PY
  rm -f "${runs[@]}"
done
