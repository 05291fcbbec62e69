#!/usr/bin/env python3
"""Where traced output predictions go wrong: for each wrong output of a `# trace` record
(`odin data build --trace`), the first trace line that differs from the reference, and whether
that line's loop variable (the element the model had to read from the prompt, in order) or its
accumulator (the loop body's arithmetic and condition) was wrong.

    odin eval ... --split test --tasks code_output --outcomes out.jsonl
    bench/trace_errors.py DATA_DIR out.jsonl [SPLIT]
"""
import collections
import glob
import json
import os
import sys


def fields(line: str) -> list:
    """`VAR=repr ACC=repr` as [(name, repr), ...]; a repr may hold spaces, so split on ` NAME=`."""
    out = []
    for part in line.split(" "):
        name, eq, value = part.partition("=")
        if eq and name.isidentifier():
            out.append([name, value])
        elif out:
            out[-1][1] += " " + part
    return [tuple(f) for f in out]


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    data, outcomes = sys.argv[1], sys.argv[2]
    split = sys.argv[3] if len(sys.argv) > 3 else "test"
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
        if r["task"] != "code_output":
            continue
        form = "trace" if r["prompt"].startswith("# trace") else "answer"
        forms[(form, "right" if o["correct"] else "wrong")] += 1
        if form != "trace" or o["correct"]:
            continue
        want = r["completion"].split("\n")
        got = o["output"].split("\n")
        i = next((k for k, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
        if i >= min(len(want), len(got)):
            cause["number of lines"] += 1
            continue
        if i == len(want) - 1:
            cause["printed value after a right trace"] += 1
            continue
        first[i + 1] += 1
        w, g = fields(want[i]), fields(got[i])
        if not g or len(g) != len(w) or [n for n, _ in w] != [n for n, _ in g]:
            cause["line shape"] += 1
        elif w[0] != g[0]:
            cause["loop variable (read from the prompt)"] += 1
        else:
            cause["accumulator (the loop body)"] += 1
    print("records by form:", dict(sorted(forms.items())))
    print("first wrong trace line (1 = first iteration):", dict(sorted(first.items())))
    print("what the first wrong line got wrong:", dict(cause))


if __name__ == "__main__":
    main()
