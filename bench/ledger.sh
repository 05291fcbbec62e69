#!/usr/bin/env bash
# The ledger's benchmark of BENCHMARKS.md (issue 27), in one run:
#
#   bench/ledger.sh [ENTRIES] [RUNS]
#
# 1. ledger_bench: appends with fsync against SQLite alone in the same mode (the disk's floor),
#    and replicating ENTRIES entries from one store to another the way nodes do, without a
#    network (ranges of 512 encoded, decoded, checked and inserted), three runs each. The
#    files go under ./target (the disk the project is on; /tmp may be memory).
# 2. ledger_sync, RUNS times: the same ENTRIES replicated between two nodes on loopback, and 10
#    nodes converging after a 10 s partition.
set -euo pipefail
entries=${1:-100000}
runs=${2:-3}
cargo build --release -p odin-ledger --example ledger_bench -p odin-node --example ledger_sync
t=${CARGO_TARGET_DIR:-target}
dir=target/ledger-bench
rm -rf "$dir" && mkdir -p "$dir"
"$t"/release/examples/ledger_bench 2000 "$entries" "$dir"
for _ in $(seq 1 "$runs"); do
  "$t"/release/examples/ledger_sync "$entries" 10
done
rm -rf "$dir"
