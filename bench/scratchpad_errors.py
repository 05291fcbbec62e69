#!/usr/bin/env python3
"""Where scratchpad answers go wrong: for each wrong output of a scratchpad arithmetic record,
the first step line that differs from the reference, and whether that line's operands (the
digits the model had to recall from the prompt) or its result (the arithmetic) were wrong.

    odin eval ... --split long --tasks add --outcomes out.jsonl
    bench/scratchpad_errors.py DATA_DIR out.jsonl [SPLIT]
"""
import collections
import glob
import json
import os
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data, outcomes = sys.argv[1], sys.argv[2]
    split = sys.argv[3] if len(sys.argv) > 3 else "long"
    records = {}
    for path in sorted(glob.glob(os.path.join(data, f"{split}-*.jsonl"))):
        for line in open(path):
            r = json.loads(line)
            records[r["id"]] = r
    forms = collections.Counter()
    first = collections.Counter()
    cause = collections.Counter()
    for line in open(outcomes):
        o = json.loads(line)
        r = records.get(o["id"])
        if r is None:
            sys.exit(f"{o['id']} is not in {data}/{split}-*.jsonl: pass the data the eval ran on")
        form = r.get("meta", {}).get("form", "answer")
        forms[(form, "right" if o["correct"] else "wrong")] += 1
        if form != "scratchpad" or o["correct"]:
            continue
        want = r["completion"].split("\n")[:-1]
        got = o["output"].split("\n")[:-1]
        i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        first[i + 1] += 1
        if i < min(len(want), len(got)):
            cause["operands" if want[i].split("=")[0] != got[i].split("=")[0] else "result"] += 1
        else:
            cause["number of steps"] += 1
    print("records by form:", dict(sorted(forms.items())))
    print("first wrong step (1 = least significant digit):", dict(sorted(first.items())))
    print("what the first wrong step got wrong:", dict(cause))


if __name__ == "__main__":
    main()
