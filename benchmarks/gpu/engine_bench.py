"""`sluice bench offline --backend native` on CUDA at several batch sizes, for benchmarks/gpu/run.sh.

    python -m benchmarks.gpu.engine_bench --out-dir DIR [--model PATH] [--batches 1,32,256] [--check]

The GPU machine reaches no registry and carries at most 64 MiB, so the bundled SmolLM2 GGUF (98 MB)
cannot travel with the command. Unless --model names a checkpoint already there, this writes a
SmolLM2-135M-shaped Llama with seeded random weights and a word-level tokenizer over the same
vocabulary: with ignore_eos and fixed lengths, tokens/s depends on the shapes, not the weights' values.
Each batch runs the real CLI in-process (serve.cli.main) twice, with CUDA graphs for decode (the
default) and without (`-o cuda_graphs=false`, eager), and leaves offline_b<N>.json and
offline_b<N>_eager.json in --out-dir: the pair is the graphs' gain at that batch.
--check builds a 2-layer checkpoint and parses every command without running it (the CI dry run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

# SmolLM2-135M-Instruct's config.json, the fields the native engine reads.
SMOLLM2_135M = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 49152, "hidden_size": 576,
    "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
    "head_dim": 64, "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192,
    "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
}


def layer_shapes(cfg: dict, i: int) -> dict[str, tuple[int, ...]]:
    h, inter, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q, kv, p = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d, f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
            p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
            p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,)}


def random_weights(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """HF-named bf16 tensors; norms are ones and matrices small so activations stay finite in bf16."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], cfg["hidden_size"]),
              "model.norm.weight": (cfg["hidden_size"],)}
    for i in range(cfg["num_hidden_layers"]):
        shapes |= layer_shapes(cfg, i)
    return {name: (torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) * 0.02).to(torch.bfloat16)
            for name, s in shapes.items()}


def word_level_tokenizer(vocab_size: int):
    """Token i is the word `t<i>`; ids 0-2 are the special tokens SmolLM2 also keeps there."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"t{i}": i for i in range(3, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces, so decode(encode(x)) == x
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def write_checkpoint(folder: Path, layers: int | None = None) -> Path:
    from safetensors.torch import save_file

    cfg = dict(SMOLLM2_135M, num_hidden_layers=layers or SMOLLM2_135M["num_hidden_layers"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    word_level_tokenizer(cfg["vocab_size"]).save(str(folder / "tokenizer.json"))
    save_file(random_weights(cfg), str(folder / "model.safetensors"))
    return folder


# Batch 256 x 256 tokens x 30 layers x K and V x 3 heads x 64 x 2 bytes is 1.5 GB; the default 1 GiB
# would make the scheduler queue requests and the run would not be at batch 256.
KV_CACHE_BYTES = 8 << 30


def bench_argv(model: Path, batch: int, out: Path, output_len: int, device: str, cuda_graphs: bool = True
               ) -> list[str]:
    """One `sluice bench offline` run: `batch` prompts all in flight, so the decode batch is `batch`
    (max_num_seqs = batch also caps the captured graphs at it)."""
    return ["bench", "offline", "--backend", "native", "--model", str(model), "--num-prompts", str(batch),
            "--concurrency", str(batch), "--input-len", "128", "--output-len", str(output_len),
            "-o", f"device={device}", "-o", "dtype=bfloat16", "-o", f"max_num_seqs={batch}",
            "-o", f"kv_cache_bytes={KV_CACHE_BYTES}", "-o", f"cuda_graphs={str(cuda_graphs).lower()}",
            "--out", str(out)]


def runs(batches: str, out_dir: Path) -> list[tuple[int, bool, Path]]:
    """(batch, cuda_graphs, result file) of every run: each batch with graphs, then eager."""
    return [(b, graphs, out_dir / f"offline_b{b}{'' if graphs else '_eager'}.json")
            for b in (int(x) for x in batches.split(",")) for graphs in (True, False)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="a checkpoint already on the machine")
    ap.add_argument("--batches", default="1,32,256")
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run of this script without a GPU")
    ap.add_argument("--check", action="store_true", help="build a tiny checkpoint, parse the commands, run none")
    a = ap.parse_args(argv)
    from serve.cli import build_parser

    model = a.model or write_checkpoint(a.out_dir / "random-smollm2-135m", layers=2 if a.check else None)
    failed = 0
    for b, graphs, out in runs(a.batches, a.out_dir):
        args = bench_argv(model, b, out, a.output_len, a.device, graphs)
        ns = build_parser(args).parse_args(args)  # a renamed flag fails here, in CI, not on the GPU
        if a.check:  # the engine options too: EngineConfig rejects an unknown or bad one
            from benchmarks.offline import parse_options
            from serve.engine.config import EngineConfig

            EngineConfig.from_options(str(model), parse_options(ns.option))
            print("would run: sluice " + " ".join(args))
            continue
        failed += ns.func(ns) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
