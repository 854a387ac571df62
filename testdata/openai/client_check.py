"""Drive Cairn's gateway with the official `openai` Python client and print one JSON report.

Usage: OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python client_check.py EMBED_MODEL CHAT_MODEL
"""

import base64
import json
import time
import struct
import sys

import urllib.error
import urllib.request

import openai

embed_model, chat_model = sys.argv[1], sys.argv[2]
instruct_model = sys.argv[3] if len(sys.argv) > 3 else None
client = openai.OpenAI(api_key="cairn-local", max_retries=0, timeout=300)
report = {"openai_version": openai.__version__}

report["models"] = sorted(m.id for m in client.models.list().data)

emb = client.embeddings.create(model=embed_model, input=["The cat sat on the mat.", "A feline rested on a rug.", "Stock prices fell."])
report["embeddings"] = {
    "count": len(emb.data),
    "dims": len(emb.data[0].embedding),
    "indices": [d.index for d in emb.data],
    "prompt_tokens": emb.usage.prompt_tokens,
    "vectors": [d.embedding for d in emb.data],
}
# Asked for explicitly, base64 comes back undecoded: little-endian float32.
b64 = client.embeddings.create(model=embed_model, input="The cat sat on the mat.", encoding_format="base64")
raw = base64.b64decode(b64.data[0].embedding)
decoded = struct.unpack("<%df" % (len(raw) // 4), raw)
report["base64_equals_float"] = list(decoded) == list(emb.data[0].embedding)

chat = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
)
report["chat"] = {
    "content": chat.choices[0].message.content,
    "role": chat.choices[0].message.role,
    "finish_reason": chat.choices[0].finish_reason,
    "usage": chat.usage.model_dump(),
    "object": chat.object,
}

if instruct_model:
    # The question a new user asks first (FINDINGS #2): an instruction-tuned model answers it.
    r = client.chat.completions.create(
        model=instruct_model,
        messages=[{"role": "user", "content": "What is the capital of France? Answer with one word."}],
        max_tokens=8,
        temperature=0,
    )
    report["instruct"] = {"content": r.choices[0].message.content, "finish_reason": r.choices[0].finish_reason}

t0 = time.monotonic()
stream = client.chat.completions.create(
    model=chat_model,
    messages=[{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is the capital of France?"}],
    max_tokens=16,
    temperature=0,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, finish, usage, first, done, cairn = [], None, None, None, None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage.total_tokens
    extra = chunk.model_extra or {}
    if "cairn" in extra:
        cairn = extra["cairn"]
    for c in chunk.choices:
        if c.delta.content:
            pieces.append(c.delta.content)
            if first is None:
                first = time.monotonic() - t0
        if c.finish_reason:
            finish = c.finish_reason
            done = time.monotonic() - t0
report["stream"] = {
    "content": "".join(pieces), "chunks": len(pieces), "finish_reason": finish, "total_tokens": usage,
    "first_token_s": first, "done_s": done, "cairn_stream": (cairn or {}).get("stream"),
}


def error_of(fn):
    try:
        fn()
    except openai.APIStatusError as e:
        body = e.body if isinstance(e.body, dict) else {}
        return {"status": e.status_code, "code": body.get("code"), "type": body.get("type"), "param": body.get("param"), "message": body.get("message")}
    return None


report["errors"] = {
    "unknown_model": error_of(lambda: client.embeddings.create(model="no-such-model", input="x")),
    "too_long": error_of(
        lambda: client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "stone " * 5000}], max_tokens=4)
    ),
    "unsupported": error_of(
        lambda: client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}], n=2)
    ),
    "bad_temperature": error_of(
        lambda: client.chat.completions.create(model=chat_model, messages=[{"role": "user", "content": "hi"}], temperature=5)
    ),
    "wrong_task": error_of(lambda: client.embeddings.create(model=chat_model, input="x")),
}


def raw_post(path, body):
    req = urllib.request.Request(str(client.base_url) + path, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return {"status": r.status, **json.load(r)}
    except urllib.error.HTTPError as e:
        return {"status": e.code, **json.load(e)["error"]}


report["errors"]["malformed_json"] = raw_post("chat/completions", b"{not json")
report["errors"]["unknown_field"] = raw_post(
    "embeddings", json.dumps({"model": embed_model, "input": "x", "colour": "blue"}).encode()
)

print(json.dumps(report))
