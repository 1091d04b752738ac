"""The grammar check behind lazy masking, on real grammars and both of the bundled model's vocabularies
(HF tokenizer, GGUF as llama.cpp sees it): along random walks through corpus grammars, for every token
(the GGUF vocabulary: the allowed ones and a random sample, its checks are slower), GrammarMatcher.
confirms(t) implies the mask allows t, and equals the mask where no text is forced; a forced token is
exactly what the mask allows; and the sampler's lazy greedy choice equals the masked argmax."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from serve.sampling import Sampler, SampleRow
from serve.sampling_params import SamplingParams
from serve.structured.bitmask import allowed_numpy
from serve.structured.matcher import GrammarFactory, GrammarMatcher
from serve.structured.rows import MatcherRows
from serve.structured.spec import StructuredSpec
from tests.data.structured_schemas import CHOICES, REGEXES, SCHEMAS
from tests.unit.model_fixtures import gguf_path, llamacpp_engine

pytestmark = pytest.mark.slow
SPECS = ([StructuredSpec.json_schema(s) for _, s in SCHEMAS[:3]] + [StructuredSpec("regex", r) for _, r in REGEXES[:2]]
         + [StructuredSpec.choices(o) for _, o in CHOICES[:1]])


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    yield from llamacpp_engine(n_parallel=1, n_ctx_per_seq=64, n_threads=1)


@pytest.fixture(scope="module", params=["hf", "gguf"])
def factory(request: pytest.FixtureRequest, engine: object) -> GrammarFactory:
    if request.param == "hf":
        from serve.models.loader import load_tokenizer

        return GrammarFactory.for_hf(load_tokenizer(gguf_path()))
    return engine.grammar_factory()  # type: ignore[attr-defined]


def checked_tokens(factory: GrammarFactory, allowed: np.ndarray, every: bool, rng: np.random.Generator) -> np.ndarray:
    if every:
        return np.arange(factory.vocab_size)
    return np.concatenate([np.flatnonzero(allowed), rng.integers(0, factory.vocab_size, 2000)])


def walk(factory: GrammarFactory, spec: StructuredSpec, rng: np.random.Generator, steps: int = 12
         ) -> Iterator[tuple[GrammarMatcher, np.ndarray]]:
    """(matcher, allowed mask) at each state of a random walk that takes allowed non-EOS tokens."""
    m = factory.matcher(spec)
    for _ in range(steps):
        mask = factory.new_bitmask(1)
        m.fill_bitmask(mask, 0)
        allowed = allowed_numpy(mask[0], factory.vocab_size)
        yield m, allowed
        ids = [t for t in np.flatnonzero(allowed) if t not in m.eos_ids]
        if not ids:
            return
        assert m.accept(int(rng.choice(ids)))


def test_the_check_agrees_with_the_mask(factory: GrammarFactory, engine: object) -> None:
    every = factory is not engine.grammar_factory()  # type: ignore[attr-defined]
    rng = np.random.default_rng(0)
    states = forced_states = 0
    for spec in SPECS:
        for m, allowed in walk(factory, spec, rng):
            forced = m.forced()
            if forced is not None:  # the check is then `t == forced`: the mask must allow that alone
                forced_states += 1
                assert np.flatnonzero(allowed).tolist() == [forced]
                tokens = np.concatenate([np.flatnonzero(allowed), rng.integers(0, factory.vocab_size, 300)])
            else:
                tokens = checked_tokens(factory, allowed, every, rng)
            confirmed = np.array([m.confirms(int(t)) for t in tokens])
            assert not (confirmed & ~allowed[tokens]).any(), spec  # never past the mask: lazy masking is exact
            if forced is None and not m._m.compute_ff_bytes():  # nothing forced: the check alone decides
                assert np.array_equal(confirmed, allowed[tokens]), spec
            states += 1
    assert states > 40 and forced_states > 5  # the walks reached forced text and free text


def test_lazy_greedy_is_the_masked_argmax(factory: GrammarFactory) -> None:
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(1)
    sampler = Sampler()
    vocab = factory.vocab_size
    for spec in SPECS[:4]:
        for m, allowed in walk(factory, spec, rng, steps=8):
            logits = torch.randn(3, vocab, generator=gen) * 4
            rows = [SampleRow("r", SamplingParams(temperature=0.0), [], [])] * 3
            got = sampler(logits.clone(), rows, {i: MatcherRows(m, [], vocab) for i in range(3)})
            masked = logits.masked_fill(~torch.from_numpy(allowed), float("-inf"))
            assert [t.token_id for t in got] == masked.argmax(dim=-1).tolist()
