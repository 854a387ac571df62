#!/usr/bin/env python3
"""Concurrent chat requests through Cairn's OpenAI gateway, the way a user bursts it: the
official `openai` client (default retries), N requests at once, 32 tokens each. Prints the
aggregate completion tokens per second, the slowest request and every error by status.

    OPENAI_BASE_URL=http://127.0.0.1:8090/v1 python3 gateway_burst.py MODEL 1 4 16
"""
import collections
import concurrent.futures
import sys
import time

import openai


def one(client, model, i):
    t0 = time.monotonic()
    try:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": f"Write one sentence about stone number {i}."}],
            max_tokens=32,
            temperature=0,
        )
        return time.monotonic() - t0, r.usage.completion_tokens, None
    except openai.APIStatusError as e:
        return time.monotonic() - t0, 0, e.status_code
    except openai.APIConnectionError:
        return time.monotonic() - t0, 0, "connection"


def main():
    model = sys.argv[1]
    levels = [int(a) for a in sys.argv[2:]] or [1, 4, 16]
    client = openai.OpenAI(api_key="cairn", timeout=300)
    one(client, model, 0)  # warm: the model loads
    print("| concurrent | completion tokens | wall | aggregate tok/s | slowest | errors |")
    print("|---:|---:|---:|---:|---:|---|")
    for n in levels:
        t0 = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            out = list(pool.map(lambda i: one(client, model, i), range(n)))
        wall = time.monotonic() - t0
        tokens = sum(o[1] for o in out)
        errors = collections.Counter(o[2] for o in out if o[2] is not None)
        err = ", ".join(f"{k}: {v}" for k, v in errors.items()) or "none"
        print(f"| {n} | {tokens} | {wall:.1f} s | {tokens / wall:.1f} | {max(o[0] for o in out):.1f} s | {err} |")


if __name__ == "__main__":
    main()
