# ruff: noqa  -- diagnosis script kept as run (paths of the machine it ran on), not product code
import sys, json, torch
sys.path.insert(0, "/work/main")
from transformers import AutoModelForCausalLM, AutoTokenizer
from benchmarks.perplexity import perplexity
torch.set_num_threads(1)
HF = "/work/peers/smollm2-135m-instruct-hf"
tok = AutoTokenizer.from_pretrained(HF)
m = AutoModelForCausalLM.from_pretrained(HF, dtype=torch.float32).eval()
W0 = {k: v.clone() for k, v in m.state_dict().items()}
Q = torch.load("/tmp/gx/full_w.pt")
ids = tok(open("/work/main/benchmarks/data/kjv_genesis37-45_ruth.txt").read(), add_special_tokens=False)["input_ids"][:1024]
def ppl():
    def fn(c):
        with torch.no_grad(): return m(input_ids=torch.tensor([c])).logits[0]
    return round(perplexity(fn, ids, 512, 512).perplexity, 3)
def setw(pick):
    m.load_state_dict(W0)
    sd = m.state_dict()
    with torch.no_grad():
        for n in Q["rtn"]:
            sd[n + ".weight"].copy_(Q[pick(n)][n])
variants = {
  "gptq, rtn q,k": lambda n: "rtn" if n.endswith(("q_proj", "k_proj")) else "gptq",
  "gptq, rtn v": lambda n: "rtn" if n.endswith("v_proj") else "gptq",
  "gptq, rtn o": lambda n: "rtn" if n.endswith("o_proj") else "gptq",
}
for k, f in variants.items():
    setw(f); print(k, ppl(), flush=True)
