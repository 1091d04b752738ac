# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
import sys, torch
sys.path.insert(0, "/work/main")
from serve.quantize.gptq import GPTQOptions, gptq_quantize
from serve.quantize.grid import QuantSpec, rtn_quantize
torch.set_num_threads(1)
d = torch.load("/tmp/gx/acts_mixed.pt"); X, W = d["X"], d["W"]
spec = QuantSpec(4, 128, False)
def H(x): x = x.double(); return 2 * x.T @ x / x.shape[0]
def e(x, w, q): return float(((x @ (w - q).T) ** 2).sum() / ((x @ w.T) ** 2).sum())
tot = {}
for t, w in W.items():
    r = rtn_quantize(w, spec).dequantize()
    row = {"rtn": e(X["kjv"][t], w, r)}
    for cal in ("calib", "calib_short"):
        for damp in (0.01, 0.1, 0.3):
            g = gptq_quantize(w, H(X[cal][t]), spec, GPTQOptions(damp_percent=damp)).dequantize()
            row[f"{cal} d{damp}"] = e(X["kjv"][t], w, g)
    both = torch.cat([X["calib"][t], X["calib_short"][t]])
    g = gptq_quantize(w, H(both), spec, GPTQOptions(damp_percent=0.1)).dequantize()
    row["both(32k) d0.1"] = e(X["kjv"][t], w, g)
    print(t.replace("model.layers.", "L"), " ".join("%s=%.2f" % (k, v / row["rtn"]) for k, v in row.items() if k != "rtn"), flush=True)
