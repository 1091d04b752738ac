# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
import sys, torch
sys.path.insert(0, "/work/main")
from serve.quantize.gptq import GPTQOptions, gptq_quantize
from serve.quantize.grid import QuantSpec, rtn_quantize
torch.set_num_threads(1)
d = torch.load("/tmp/gx/acts.pt")
X, W = d["X"], d["W"]
spec = QuantSpec(4, 128, False)
def H(x):
    x = x.double(); return 2 * x.T @ x / x.shape[0]
for t in ["model.layers.27.mlp.gate_proj", "model.layers.27.mlp.down_proj", "model.layers.15.mlp.down_proj"]:
    w = W[t]; xc = X["calib"][t]; xk = X["kjv"][t]
    r = rtn_quantize(w, spec).dequantize()
    g = gptq_quantize(w, H(xc), spec, GPTQOptions()).dequantize()
    den = ((xk @ w.T) ** 2).sum(1)
    er = ((xk @ (w - r).T) ** 2).sum(1); eg = ((xk @ (w - g).T) ** 2).sum(1)
    ratio = eg / er
    pos = torch.arange(xk.shape[0]) % 512
    print(t, "total rtn %.5f gptq %.5f" % (er.sum() / den.sum(), eg.sum() / den.sum()))
    print("  pos0 tokens: rtn err share %.3f gptq err share %.3f" % (er[pos == 0].sum() / er.sum(), eg[pos == 0].sum() / eg.sum()))
    top = torch.topk(eg, 10).indices
    print("  top-10 gptq tokens share of gptq err %.3f; their positions %s" % (eg[top].sum() / eg.sum(), pos[top].tolist()))
    print("  median per-token ratio gptq/rtn %.2f, mean %.2f" % (ratio.median(), ratio.mean()))
    # energy of kjv inputs in the calib-H small eigen directions
    ev, V = torch.linalg.eigh(H(xc))
    pk = ((xk.double() @ V) ** 2).mean(0); pc = ((xc.double() @ V) ** 2).mean(0)
    k = xk.shape[1]
    for q in (0.5, 0.9):
        n = int(k * q)
        print("  low %d%% eigdirs: calib energy share %.4f, kjv energy share %.4f" % (q * 100, pc[:n].sum() / pc.sum(), pk[:n].sum() / pk.sum()))
    for damp in (0.01, 0.1, 0.3, 0.6):
        gg = gptq_quantize(w, H(xc), spec, GPTQOptions(damp_percent=damp)).dequantize()
        print("  damp %.2f: calib %.5f kjv %.5f opt %.5f" % (damp, *(float(((X[s][t] @ (w - gg).T) ** 2).sum() / ((X[s][t] @ w.T) ** 2).sum()) for s in ("calib", "kjv", "opticks_far"))))
