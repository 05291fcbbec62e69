#!/usr/bin/env python3
"""Check `odin export gguf` with llama.cpp itself: the file loads, llama.cpp's
tokenizer splits our prompts into our token ids, and greedy decoding from the
same prompt ids gives the same tokens as `odin generate --engine int8`.

Needs llama-cpp-python (PyPI; it builds llama.cpp from source), outside the
test path, e.g. in the bench virtual environment:

    python3 -m venv .venv-bench && .venv-bench/bin/pip install llama-cpp-python
    odin export gguf --model models/odin-tiny --out /tmp/odin-tiny.gguf
    .venv-bench/bin/python bench/llama_cpp_check.py --gguf /tmp/odin-tiny.gguf \
        --model models/odin-tiny --prompts crates/engine/tests/fixtures/odin-tiny-test-sample.jsonl

Prints a JSON summary; exits 1 if any sequence differs.
"""
import argparse
import json
import subprocess
import sys

from llama_cpp import Llama

EOS = 1


def odin_generate(odin, model, prompt, max_tokens):
    out = subprocess.run(
        [odin, "generate", "--model", model, "--prompt", prompt, "--json", "--max-tokens", str(max_tokens)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout)


def llama_greedy(llm, prompt_ids, max_tokens):
    llm.reset()
    llm.eval(prompt_ids)
    out = []
    for _ in range(max_tokens):
        logits = llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
        if tok == EOS:
            break
        out.append(tok)
        llm.eval([tok])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--model", required=True, help="the odin model directory the GGUF came from")
    ap.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field per line")
    ap.add_argument("--odin", default="target/release/odin")
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=64)
    a = ap.parse_args()

    llm = Llama(model_path=a.gguf, n_ctx=2048, n_batch=512, n_threads=1, logits_all=True, verbose=False)
    every = [json.loads(l)["prompt"] for l in open(a.prompts)]
    # An even spread over the file (the fixture is grouped by task).
    prompts = every[:: max(1, len(every) // a.limit)][: a.limit]
    same_tok = same_gen = 0
    first_diff = None
    for p in prompts:
        ours = odin_generate(a.odin, a.model, p, a.max_tokens)
        # Our prompt is <|bos|> <|prompt|> text <|answer|>: llama.cpp must split the text the same way.
        text_ids = llm.tokenize(p.encode(), add_bos=False, special=False)
        same_tok += text_ids == ours["prompt_ids"][2:-1]
        theirs = llama_greedy(llm, ours["prompt_ids"], a.max_tokens)
        if theirs == ours["ids"]:
            same_gen += 1
        elif first_diff is None:
            first_diff = {"prompt": p, "odin": ours["ids"], "llama.cpp": theirs}
    summary = {
        "prompts": len(prompts),
        "tokenization_identical": same_tok,
        "greedy_identical": same_gen,
        "first_difference": first_diff,
    }
    print(json.dumps(summary, indent=2))
    sys.exit(0 if same_gen == len(prompts) and same_tok == len(prompts) else 1)


if __name__ == "__main__":
    main()
