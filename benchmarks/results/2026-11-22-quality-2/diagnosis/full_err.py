# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
"""Run the real pipeline (gptq mixed d0.1) and RTN; per-linear KJV output error with float-model activations."""
import sys, json, torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM, AutoTokenizer
from serve.quantize.calibration import calibration_set
from serve.quantize.gptq import GPTQOptions
from serve.quantize.grid import QuantSpec
from serve.quantize.sequential import quantize_decoder
torch.set_num_threads(1)
HF = "/work/peers/smollm2-135m-instruct-hf"
tok = AutoTokenizer.from_pretrained(HF)
spec = QuantSpec(4, 128, False)
m = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
W0 = {k: v.clone() for k, v in m.state_dict().items()}
kjv = torch.tensor(tok(open("/work/main/benchmarks/data/kjv_genesis37-45_ruth.txt").read(), add_special_tokens=False)["input_ids"][:2048]).view(4, 512)
# float activations of every linear on KJV
names = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and ".layers." in n]
xs = {n: [] for n in names}
hs = [m.get_submodule(n).register_forward_pre_hook(lambda mod, a, n=n: xs[n].append(a[0].reshape(-1, a[0].shape[-1]))) for n in names]
with torch.no_grad():
    m(input_ids=kjv, use_cache=False)
for h in hs: h.remove()
X = {n: torch.cat(v) for n, v in xs.items()}
res = {}
with torch.no_grad():
    q_rtn = quantize_decoder(m, None, spec, "rtn", GPTQOptions(), lambda i, s: None)
    m.load_state_dict(W0)
    win = calibration_set(tok, "mixed", 32, 512, 0)
    q_g = quantize_decoder(m, win, spec, "gptq", GPTQOptions(damp_percent=0.1), lambda i, s: print(i, s, flush=True) if s == "forward" else None, true_sequential=False)
torch.save({"rtn": {k: v.dequantize() for k, v in q_rtn.items()}, "gptq": {k: v.dequantize() for k, v in q_g.items()}}, "/tmp/gx/full_w.pt")
for n in names:
    w = W0[n + ".weight"]; x = X[n]; den = float(((x @ w.T) ** 2).sum())
    er = float(((x @ (w - q_rtn[n].dequantize()).T) ** 2).sum()) / den
    eg = float(((x @ (w - q_g[n].dequantize()).T) ** 2).sum()) / den
    res[n] = (er, eg)
    print("%-40s rtn %.5f gptq %.5f ratio %.2f" % (n, er, eg, eg / er), flush=True)
json.dump(res, open("/tmp/gx/full_err.json", "w"))
