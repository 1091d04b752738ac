"""Single-stream decode speed of the llama.cpp backend with and without prompt-lookup speculation.

In process (no HTTP), greedy, an input-grounded prompt: the model is asked to repeat a KJV passage and
its answer is started with the passage's first words, so most of the output is copied from the prompt.
Plain and speculative runs alternate (the machine's load drifts) and every timed run is a prefix-cache
hit of the same prompt, so both compute the same tokens. Decode tok/s = (tokens - 1) / (last - first
token time). Also prints how a llama_decode's time grows with the rows it computes, which bounds the
gain: speculation pays only when verifying k drafts costs much less than k plain steps.

    python -m benchmarks.spec_lookup_llamacpp --threads 1 --reps 3 -k 2 4 8
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path

from serve.backends.llamacpp_engine import Job, LlamaCppEngine, LlamaCppOptions
from serve.backends.llamacpp_spec import PromptLookupConfig
from serve.model_store import model_path
from serve.sampling_params import SamplingParams

_DATA = Path(__file__).parent / "data" / "kjv_genesis37-45_ruth.txt"


def _prompt(engine: LlamaCppEngine, kind: str) -> list[int]:
    """"repeat": input-grounded (most of the answer is in the prompt); "chat": open-ended, little to copy."""
    passage = _DATA.read_text()[2000:2800]
    if kind == "chat":
        return engine.tokenize("<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a "
                               "message in a bottle.<|im_end|>\n<|im_start|>assistant\n", True)
    chat = (f"<|im_start|>user\nRepeat the following passage exactly, word for word:\n\n{passage}<|im_end|>\n"
            f"<|im_start|>assistant\n{passage[:60]}")
    return engine.tokenize(chat, True)


def _timed(engine: LlamaCppEngine, prompt: list[int], max_tokens: int, speculate: bool,
           concurrency: int = 1) -> tuple[int, float]:
    """Runs `concurrency` copies of the request at once; returns (tokens, aggregate decode tok/s)."""
    stamps: list[float] = []
    left = [concurrency]
    done = threading.Event()

    def emit(kind: str, payload: object) -> None:  # engine thread only
        if kind == "token":
            stamps.append(time.perf_counter())
        else:
            left[0] -= 1
            if not left[0]:
                done.set()

    for i in range(concurrency):
        engine.submit(Job(f"bench{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), emit,
                          speculate=speculate))
    done.wait()
    return len(stamps), (len(stamps) - concurrency) / (stamps[-1] - stamps[0])


def _rows_cost(engine: LlamaCppEngine, rows: int, pos0: int, reps: int = 7) -> float:
    """Median seconds of one llama_decode of `rows` tokens (all with logits) on slot 0 after pos0."""
    b = engine.batch.batch
    engine.ctx.kv_cache_seq_rm(0, pos0, -1)  # the engine is idle; it closes right after this
    times = []
    for _ in range(reps):
        for i in range(rows):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = 1000 + i, pos0 + i, 1, True
            b.seq_id[i][0] = 0
        b.n_tokens = rows
        t0 = time.perf_counter()
        engine.ctx.decode(engine.batch)
        times.append(time.perf_counter() - t0)
        engine.ctx.kv_cache_seq_rm(0, pos0, -1)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("-k", type=int, nargs="+", default=[4])
    ap.add_argument("--lookup-min", type=int, default=1)
    ap.add_argument("--prompt", choices=("repeat", "chat"), default="repeat")
    ap.add_argument("--concurrency", type=int, default=1, help="identical requests decoded together")
    ap.add_argument("--model", default="", help="a .gguf path (default: the bundled SmolLM2 Q4_1)")
    a = ap.parse_args()
    print(f"load average at start: {os.getloadavg()}")
    for k in a.k:
        cfg = PromptLookupConfig(num_speculative_tokens=k, prompt_lookup_max=4, prompt_lookup_min=a.lookup_min)
        path = a.model or str(model_path("smollm2-135m-instruct"))
        engine = LlamaCppEngine(LlamaCppOptions(path, n_parallel=max(1, a.concurrency),
                                                n_threads=a.threads, spec=cfg))
        prompt = _prompt(engine, a.prompt)
        _timed(engine, prompt, 8, False)  # warm: the timed runs are all cache hits
        plain, spec = [], []
        c0 = dict(engine.stats())
        for _ in range(a.reps):
            plain.append(_timed(engine, prompt, a.max_tokens, False, a.concurrency)[1])
            spec.append(_timed(engine, prompt, a.max_tokens, True, a.concurrency)[1])
        c = {key: engine.stats()[key] - c0[key] for key in c0 if key.startswith("spec_decode")}
        acc = c["spec_decode_num_accepted_tokens"] / max(1, c["spec_decode_num_draft_tokens"])
        mp, ms = statistics.median(plain), statistics.median(spec)
        print(f"{Path(path).name} k={k} threads={a.threads} concurrency={a.concurrency} {a.prompt} prompt={len(prompt)} max_tokens={a.max_tokens}: plain {mp:.1f} tok/s, "
              f"prompt lookup {ms:.1f} tok/s ({ms / mp:.2f}x), acceptance {acc:.2f} "
              f"({c['spec_decode_num_accepted_tokens']}/{c['spec_decode_num_draft_tokens']} over "
              f"{c['spec_decode_num_drafts']} drafts); runs plain {[round(x, 1) for x in plain]} "
              f"spec {[round(x, 1) for x in spec]}")
        if k == a.k[0] and a.concurrency == 1:
            costs = {r: _rows_cost(engine, r, len(prompt)) for r in (1, 2, 3, 5, 9)}
            print("llama_decode ms by rows: " + ", ".join(f"{r}: {s * 1e3:.1f}" for r, s in costs.items()))
        engine.close()
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
