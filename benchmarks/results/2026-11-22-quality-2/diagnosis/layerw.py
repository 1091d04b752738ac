# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
import sys, torch
sys.path.insert(0, "/work/main")
from serve.quantize.gptq import GPTQOptions, gptq_quantize
from serve.quantize.grid import QuantSpec, rtn_quantize
torch.set_num_threads(1)
d = torch.load("/tmp/gx/acts.pt"); X, W = d["X"], d["W"]
spec = QuantSpec(4, 128, False)
def H(x): x = x.double(); return 2 * x.T @ x / x.shape[0]
def e(x, w, q): return float(((x @ (w - q).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
for t in ["model.layers.2.mlp.down_proj", "model.layers.15.mlp.gate_proj", "model.layers.27.mlp.gate_proj", "model.layers.27.mlp.down_proj"]:
    w = W[t]; xc = X["calib"][t]; tr, te = xc[:8192], xc[8192:]
    r = rtn_quantize(w, spec).dequantize()
    g = gptq_quantize(w, H(tr), spec, GPTQOptions()).dequantize()
    print(t, "rtn train %.5f test %.5f kjv %.5f | gptq(train half) train %.5f test(same source) %.5f kjv %.5f" % (
        e(tr, w, r), e(te, w, r), e(X["kjv"][t], w, r), e(tr, w, g), e(te, w, g), e(X["kjv"][t], w, g)))
