#!/usr/bin/env python3
"""llama.cpp on the same GGUF, prompt and thread count as Cairn's engine: the reference that
`cairn bench inference --reference` runs beside it. Benchmark only; never part of the runtime.

Reads one JSON object on stdin: {"model": path, "threads": n, "prompt": [token ids],
"tokens": n, "reps": n}. Greedy decoding with every end token banned, so both engines generate
exactly `tokens` tokens. Prints one JSON object: the prompt pass and the generation times
(medians over reps) and the generated ids of the last rep.
"""
import json
import statistics
import sys
import time

import llama_cpp
import numpy as np


def main():
    req = json.load(sys.stdin)
    llm = llama_cpp.Llama(
        model_path=req["model"],
        n_ctx=max(512, len(req["prompt"]) + req["tokens"] + 8),
        n_threads=req["threads"],
        n_threads_batch=req["threads"],
        n_batch=512,
        verbose=False,
    )
    vocab = llm.n_vocab()
    banned = [i for i in range(vocab) if llama_cpp.llama_vocab_is_eog(llm._model.vocab, i)]
    prompt_ms, gen_ms, ids = [], [], []
    for _ in range(max(1, req.get("reps", 1))):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(req["prompt"])
        t1 = time.perf_counter()
        ids = []
        for _ in range(req["tokens"]):
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(vocab,)
            ).copy()
            logits[banned] = -float("inf")
            nxt = int(logits.argmax())
            ids.append(nxt)
            llm.eval([nxt])
        t2 = time.perf_counter()
        prompt_ms.append((t1 - t0) * 1e3)
        gen_ms.append((t2 - t1) * 1e3)
    print(json.dumps({
        "engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})",
        "prompt_ms": statistics.median(prompt_ms),
        "gen_ms": statistics.median(gen_ms),
        "ids": ids,
    }))


if __name__ == "__main__":
    main()
