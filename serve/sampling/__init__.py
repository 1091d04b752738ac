"""Token sampling, one implementation for every engine that hands us logits (native, llama.cpp).

Order per logits row (vLLM v1's), in float32:

  1. grammar mask (structured output): disallowed tokens -> -inf;
  2. logit_bias; 3. repetition, frequency and presence penalties;
  4. temperature == 0 (below 1e-5 counts as 0, as in vLLM): the argmax of that (greedy); otherwise
  5. temperature, 6. min_p (relative to the top probability of the whole distribution),
     7. top_k, 8. top_p (over the distribution renormalised after min_p and top_k), 9. one draw.

Logprobs (`logprobs_mode`, vLLM's names): "raw_logprobs" (the default) is the log-softmax of the
model's logits after the grammar mask and before bias, penalties, temperature and truncation;
"processed_logprobs" is the log-softmax of the distribution the token came from (greedy rows: after
bias and penalties; sampled rows: after every step above, so truncated tokens never appear).

The grammar mask of step 1 is applied lazily where that is exact (constraints.py): sample first,
check the token against the grammar, mask and choose again only on refusal.

  sampler.py      Sampler: the batched pipeline, plain rows and speculative verification
  transforms.py   the logits transforms, truncation over a top slice, argmax, inverse-CDF draws
  constraints.py  grammar masks: which rows mask first, which are checked after sampling
  rejection.py    rejection sampling of draft tokens (exact for any draft distribution)
  seeds.py        per-request generators and the shared one
  logprobs.py     logprobs of the chosen tokens and the top alternatives
"""

from serve.sampling.sampler import LOGPROBS_MODES, DraftGroup, Sampler, SampleRow

__all__ = ["LOGPROBS_MODES", "DraftGroup", "SampleRow", "Sampler"]
