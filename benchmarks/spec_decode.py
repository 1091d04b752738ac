"""Speculative decoding in the native engine: decode tok/s with and without, side by side in one run.

In process (no HTTP), greedy, SmolLM2 bundled model. Two single-stream tasks:
  * "repeat" (input-grounded: repeat a KJV passage, answer started with its first words) -- plain vs
    ngram (prompt lookup);
  * "chat" (open-ended story) -- plain vs draft (quantized self-draft: the target's own checkpoint
    under the draft quant method).
Then batch-size sweeps (B copies of the repeat request, then of the chat request, at once) for plain
vs ngram with the batch gate off, to see where speculation stops paying. Plain and speculative runs alternate (the machine's
load drifts). Decode tok/s = (tokens - B) / (last token time - first token time), aggregate over the
batch. Acceptance = accepted / drafted tokens. Results go to benchmarks/results/<out>/spec_decode.json.

    python -m benchmarks.spec_decode --threads 1 --reps 2 --max-tokens 64 --out 2026-11-22-spec
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.machine import git_commit, machine_info
from benchmarks.machine_load import measured_load
from serve.engine.engine import LLMEngine
from serve.model_store import model_path
from serve.sampling_params import SamplingParams
from serve.spec_decode.config import SpecDecodeConfig

_DATA = Path(__file__).parent / "data" / "kjv_genesis37-45_ruth.txt"
_RESULTS = Path(__file__).parent / "results"


def prompts(tokenizer: Any) -> dict[str, list[int]]:
    passage = _DATA.read_text()[2000:2800]
    repeat = (f"<|im_start|>user\nRepeat the following passage exactly, word for word:\n\n{passage}<|im_end|>\n"
              f"<|im_start|>assistant\n{passage[:60]}")
    chat = ("<|im_start|>user\nWrite a short story about a lighthouse keeper who finds a message in a "
            "bottle.<|im_end|>\n<|im_start|>assistant\n")
    return {"repeat": tokenizer.encode(repeat), "chat": tokenizer.encode(chat)}


def timed(make: Callable[[], LLMEngine], prompt: list[int], max_tokens: int, batch: int = 1) -> dict[str, float]:
    """B copies of one greedy request at once; aggregate decode tok/s and this run's acceptance.

    A fresh engine per run: engines share the runner's KV cache, so one engine's prefix cache must
    never outlive another engine's writes."""
    engine = make()
    s = engine.scheduler.spec_stats
    drafted, accepted = s.num_draft_tokens, s.num_accepted_tokens
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"b{time.monotonic_ns()}-{i}", prompt, params)
    stamps: list[tuple[float, int]] = []
    while engine.has_unfinished():
        outs = engine.step()
        n = sum(len(o.new_token_ids) for o in outs)
        if n:
            stamps.append((time.perf_counter(), n))
    tokens = sum(n for _, n in stamps)
    first_step = stamps[0][1]  # the prefill's tokens: decode time starts after them
    rate = (tokens - first_step) / (stamps[-1][0] - stamps[0][0])
    d = s.num_draft_tokens - drafted
    return {"tokens": tokens, "decode_tok_s": rate, "acceptance": (s.num_accepted_tokens - accepted) / d if d else 0.0}


def compare(engines: dict[str, Callable[[], LLMEngine]], prompt: list[int], args: argparse.Namespace, batch: int = 1
            ) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in engines}
    for engine in engines.values():  # warm-up (and prefix cache fill), not counted
        timed(engine, prompt, 8, batch)
    for _ in range(args.reps):
        for name, engine in engines.items():
            runs[name].append(timed(engine, prompt, args.max_tokens, batch))
    out: dict[str, Any] = {"batch": batch}
    for name, rs in runs.items():
        out[name] = {"decode_tok_s": statistics.median(r["decode_tok_s"] for r in rs),
                     "acceptance": statistics.median(r["acceptance"] for r in rs), "runs": rs}
    names = list(engines)
    out["speedup"] = out[names[1]]["decode_tok_s"] / out[names[0]]["decode_tok_s"]
    return out


def build(args: argparse.Namespace) -> tuple[Any, dict[str, Callable[[], LLMEngine]]]:
    from serve.spec_decode.draft_model import DraftModelProposer
    from serve.worker.model_runner import ModelRunner, RunnerConfig

    runner = ModelRunner(RunnerConfig(str(model_path(args.model)), dtype=args.dtype, num_threads=args.threads,
                                      quantization=args.target_quant, kv_cache_bytes=256 << 20))
    k, gate = args.k, 0  # the gate is what the sweep measures: off here
    ngram = SpecDecodeConfig(speculative_method="ngram", num_speculative_tokens=k, prompt_lookup_min=args.lookup_min,
                             speculative_disable_by_batch_size=gate, speculative_adaptive=args.adaptive)
    draft = SpecDecodeConfig(speculative_method="draft", num_speculative_tokens=args.draft_k,
                             speculative_quantization=args.draft_quant, speculative_disable_by_batch_size=gate,
                             speculative_adaptive=args.adaptive)
    proposer = DraftModelProposer.for_target(runner, draft, max_batch=8)
    return runner, {"plain": lambda: LLMEngine(runner), "ngram": lambda: LLMEngine(runner, speculative=ngram),
                    "draft": lambda: LLMEngine(runner, speculative=draft, proposer=proposer)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--target-quant", default="none", help="target's quant method (the engine option quantization)")
    ap.add_argument("--draft-quant", default="auto", help="self-draft quant method (speculative_quantization)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("-k", type=int, default=4, help="num_speculative_tokens for ngram")
    ap.add_argument("--draft-k", type=int, default=3, help="num_speculative_tokens for the draft model")
    ap.add_argument("--adaptive", action="store_true", help="speculative_adaptive (k follows acceptance)")
    ap.add_argument("--lookup-min", type=int, default=1, help="prompt_lookup_min for ngram")
    ap.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8, 16])
    ap.add_argument("--out", default=None, help="directory name under benchmarks/results/")
    args = ap.parse_args(argv)
    runner, engines = build(args)
    ps = prompts(runner.tokenizer)
    with measured_load() as load:
        result = _measure(args, runner, engines, ps, argv)
    result["machine"]["load_avg_1m_end"] = machine_info()["load_avg_1m"]
    result["machine"]["load"] = load
    print_summary(result)
    if args.out:
        out = _RESULTS / args.out
        out.mkdir(parents=True, exist_ok=True)
        (out / "spec_decode.json").write_text(json.dumps(result, indent=1))
    return result


def _measure(args: argparse.Namespace, runner: Any, engines: dict[str, Any], ps: dict[str, Any],
             argv: list[str] | None) -> dict[str, Any]:
    return {
        "command": "python -m benchmarks.spec_decode " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine_info(), "git_commit": git_commit(), "args": vars(args),
        "target_quant_used": getattr(runner.model, "quantization", None),
        "draft_quant_used": getattr(engines["draft"]().spec.proposer.model, "quantization", None),
        "repeat_ngram": compare({"plain": engines["plain"], "ngram": engines["ngram"]}, ps["repeat"], args),
        "chat_draft": compare({"plain": engines["plain"], "draft": engines["draft"]}, ps["chat"], args),
        "repeat_draft": compare({"plain": engines["plain"], "draft": engines["draft"]}, ps["repeat"], args),
        "sweep_ngram": [compare({"plain": engines["plain"], "ngram": engines["ngram"]}, ps["repeat"], args, b)
                        for b in args.batches],
        # Open-ended chat: little to copy, so this is the cost side (drafts that mostly fail).
        "sweep_ngram_chat": [compare({"plain": engines["plain"], "ngram": engines["ngram"]}, ps["chat"], args, b)
                             for b in args.batches],
    }


def print_summary(r: dict[str, Any]) -> None:
    for key in ("repeat_ngram", "chat_draft", "repeat_draft"):
        c = r[key]
        base, spec = [n for n in c if n not in ("batch", "speedup")]
        print(f"{key:13s} {base} {c[base]['decode_tok_s']:7.1f} tok/s  {spec} {c[spec]['decode_tok_s']:7.1f} tok/s"
              f"  speedup {c['speedup']:.2f}x  acceptance {c[spec]['acceptance']:.2f}")
    for key in ("sweep_ngram", "sweep_ngram_chat"):
        for c in r[key]:
            print(f"{key:16s} batch {c['batch']:2d}  plain {c['plain']['decode_tok_s']:7.1f}  ngram {c['ngram']['decode_tok_s']:7.1f}"
                  f"  speedup {c['speedup']:.2f}x  acceptance {c['ngram']['acceptance']:.2f}")


if __name__ == "__main__":
    main()
