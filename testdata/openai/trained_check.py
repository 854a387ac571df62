"""Ask a model trained on Cairn for a completion through the gateway, with the official
`openai` Python client, and print one JSON report.

Usage: OPENAI_BASE_URL=http://127.0.0.1:PORT/v1 python trained_check.py MODEL PROMPT
"""

import json
import sys

import openai

model, prompt = sys.argv[1], sys.argv[2]
client = openai.OpenAI(api_key="cairn-local", max_retries=0, timeout=300)
report = {"models": sorted(m.id for m in client.models.list().data)}
chat = client.chat.completions.create(
    model=model,
    messages=[{"role": "user", "content": prompt}],
    max_tokens=60,
    temperature=0,
)
report["content"] = chat.choices[0].message.content
report["finish_reason"] = chat.choices[0].finish_reason
report["usage"] = chat.usage.model_dump()
again = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": prompt}], max_tokens=60, temperature=0
)
report["repeats"] = again.choices[0].message.content == report["content"]
print(json.dumps(report))
