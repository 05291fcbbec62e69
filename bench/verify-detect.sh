#!/usr/bin/env bash
# Checking every hop, the detection benchmark of BENCHMARKS.md (issue 26).
#
#   bench/verify-detect.sh OUT_DIR [TRIALS]
#
# For each attacker: TRIALS fresh 4-process networks (every block served twice, one liar),
# a client auditing 5% of hop-steps with probation off (--probation-audits 0, so the 5% alone
# is measured), answering until the liar is banned (at most 400 answers of up to 64 tokens).
# Then the same with probation on (the default 20 audits). Then false positives: no liar,
# every hop-step audited, the nodes on the scalar and AVX2 kernels in turn and the client on
# AVX2, until at least 10,000 audited hop-steps. Needs a release build.
set -euo pipefail
out=${1:?usage: bench/verify-detect.sh OUT_DIR [TRIALS]}
trials=${2:-10}
odin=./target/release/odin
mkdir -p "$out"
kinds="flip-bit noise stale other-session skip-blocks other-model one-in-100"
for probation in 0 20; do
  for kind in $kinds; do
    for t in $(seq 1 "$trials"); do
      f="$out/p$probation-$kind-$t.json"
      [ -s "$f" ] && continue
      "$odin" swarm --json --nodes 4 --cheat 1 --cheat-kind "$kind" --audit 0.05 --probation-audits "$probation" \
        --answers 400 --max-tokens 64 --until-banned > "$f.tmp" 2>"$out/p$probation-$kind-$t.log" || true
      mv "$f.tmp" "$f"
    done
  done
done
if [ ! -s "$out/honest.json" ]; then
  ODIN_KERNEL=avx2 "$odin" swarm --json --nodes 4 --verify --kernels scalar,avx2 --audit 1 \
    --answers 300 --max-tokens 64 > "$out/honest.json.tmp" 2>"$out/honest.log" || true
  mv "$out/honest.json.tmp" "$out/honest.json"
fi
python3 - "$out" "$trials" $kinds <<'PY'
import json, os, statistics, sys
out, trials, kinds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
for probation in (0, 20):
    print(f"\nprobation {probation} audits, p = 0.05, {trials} trials per attacker")
    print("| attacker | caught | liar's steps until the ban: median (min–max) | liar steps in all | wrong answers before the ban |")
    print("|---|---:|---:|---:|---:|")
    for k in kinds:
        steps, caught, wrong = [], 0, 0
        for t in range(1, trials + 1):
            try:
                v = json.load(open(os.path.join(out, f"p{probation}-{k}-{t}.json")))
            except (OSError, ValueError):
                continue
            s = v["liar_steps"][0]
            steps.append(s)
            caught += bool(v["all_liars_banned"])
            wrong += sum(1 for a in v["answers"] if not a["correct"])
        if not steps:
            print(f"| {k} | no trial ran | | | |")
            continue
        print(f"| {k} | {caught}/{len(steps)} | {statistics.median(steps):g} ({min(steps)}–{max(steps)}) | {sum(steps)} | {wrong} |")
try:
    v = json.load(open(os.path.join(out, "honest.json")))
    r = v["report"]
    print(f"\nhonest, kernels {v['kernels']}: claims {r['claims']}, audits {r['audits']}, passed {r['passed']}, "
          f"caught {r['caught']}, broken {r['broken']}, undone {r['undone']}, banned {len(r['banned'])}, "
          f"answers correct {sum(a['correct'] for a in v['answers'])}/{len(v['answers'])}")
except (OSError, ValueError) as e:
    print("honest run:", e)
PY
