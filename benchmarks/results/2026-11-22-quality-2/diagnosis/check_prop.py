# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
import sys, torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM
from serve.quantize.sequential import _layer_inputs, _run_layer
torch.set_num_threads(1)
m = AutoModelForCausalLM.from_pretrained("/work/peers/smollm2-135m-instruct-hf", dtype=torch.float32).eval()
print("attn impl:", m.config._attn_implementation)
ids = torch.randint(100, 5000, (4, 64), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    inputs, kw = _layer_inputs(m, ids, 2)
    print({k: (type(v).__name__, getattr(v, "shape", None) if not isinstance(v, tuple) else [t.shape for t in v]) for k, v in kw.items()})
    ref = m(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    x = inputs
    for i in range(3):
        x = _run_layer(m.model.layers[i], x, kw)
        got = torch.cat(x)
        print("layer", i, "max |diff| vs true hidden:", float((got - ref[i + 1]).abs().max()), "scale", float(ref[i + 1].abs().max()))
