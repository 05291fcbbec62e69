"""Drive an ODIN API with the official `openai` client (used by net_cli.rs).

Prints one JSON object: the non-streaming and streaming answers, and the
HTTP status of each bad request, so the Rust test can compare them.
"""
import json
import sys

import openai

base, model, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
out = {}

c = client.completions.create(model=model, prompt=prompt, max_tokens=64, temperature=0)
out["completion"] = c.choices[0].text
out["completion_finish"] = c.choices[0].finish_reason
out["usage"] = c.usage.completion_tokens

chunks = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=64, temperature=0, stream=True
)
pieces = [ch.choices[0].delta.content or "" for ch in chunks if ch.choices]
out["chat_stream"] = "".join(pieces)
out["chat_stream_chunks"] = len([p for p in pieces if p])

chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=64)
out["chat"] = chat.choices[0].message.content

stream = client.completions.create(model=model, prompt=prompt, max_tokens=64, stream=True)
out["completion_stream"] = "".join(ch.choices[0].text for ch in stream)

out["models"] = [m.id for m in client.models.list().data]

errors = {}
for name, call in [
    ("unknown_model", lambda: client.completions.create(model="no-such-model", prompt=prompt)),
    ("bad_temperature", lambda: client.completions.create(model=model, prompt=prompt, temperature=9)),
    ("no_messages", lambda: client.chat.completions.create(model=model, messages=[])),
    ("zero_tokens", lambda: client.completions.create(model=model, prompt=prompt, max_tokens=0)),
]:
    try:
        call()
        errors[name] = 200
    except openai.APIStatusError as e:
        errors[name] = e.status_code
        assert isinstance(e.body, dict) and "message" in e.body, e.body
out["errors"] = errors
print(json.dumps(out))
