"""Workloads built with the bundled model's real tokenizer (loaded offline from the GGUF)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from benchmarks.datasets import DatasetSpec, build, prefix_indices
from benchmarks.tokenizer import TokenizerNotFound, load_tokenizer
from tests.requirements import model_missing, requires

MODEL = "smollm2-135m-instruct"
pytestmark = [pytest.mark.slow,
              requires("model", model_missing(MODEL))]


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201 - BenchTokenizer
    return load_tokenizer(MODEL)


def test_random_prompts_have_exactly_the_asked_token_count(tok) -> None:  # noqa: ANN001
    convs = build(DatasetSpec("random", num_requests=20, input_len=100, output_len=7, seed=3), tok)
    assert len(convs) == 20
    for c in convs:
        (turn,) = c.turns
        assert len(tok.encode(turn.prompt)) == turn.prompt_len == 100
        assert turn.output_len == 7
    special = set(tok.special_tokens().values())
    assert "<|im_start|>" in special
    assert not any(s in c.turns[0].prompt for c in convs for s in special)


def test_seed_reproduces_and_range_ratio_spreads_lengths(tok) -> None:  # noqa: ANN001
    spec = DatasetSpec("random", num_requests=30, input_len=64, output_len=64, range_ratio=0.5, seed=9)
    a, b = build(spec, tok), build(spec, tok)
    assert [c.turns[0].prompt for c in a] == [c.turns[0].prompt for c in b]
    lens = [c.turns[0].prompt_len for c in a]
    outs = [c.turns[0].output_len for c in a]
    assert all(32 <= n <= 96 for n in lens + outs) and len(set(lens)) > 5


def test_prefix_groups_share_their_prefix(tok) -> None:  # noqa: ANN001
    spec = DatasetSpec("prefix", num_requests=8, input_len=16, prefix_len=200, num_prefixes=2)
    prompts = [c.turns[0].prompt for c in build(spec, tok)]
    head = [p[:300] for p in prompts]
    assert head[0] == head[2] == head[4] and head[1] == head[3] and head[0] != head[1]
    assert all(200 < len(tok.encode(p)) <= 220 for p in prompts)


def test_random_prefix_order_is_seeded_uses_every_prefix_and_keeps_the_texts(tok) -> None:  # noqa: ANN001
    spec = DatasetSpec("prefix", num_requests=24, input_len=8, prefix_len=40, num_prefixes=4, seed=5,
                       prefix_order="random")
    cyclic = [c.turns[0].prompt for c in build(replace(spec, prefix_order="cyclic"), tok)]
    heads = sorted({p[:60] for p in cyclic})
    order = [heads.index(c.turns[0].prompt[:60]) for c in build(spec, tok)]
    again = [heads.index(c.turns[0].prompt[:60]) for c in build(spec, tok)]
    assert order == again  # same seed, same order
    assert sorted(Counter(order).values()) == [6, 6, 6, 6]  # every prefix, equally often
    assert order != [order[i % 4] for i in range(24)]  # not a cycle any more
    assert len(set(zip(order, prefix_indices(spec), strict=True))) == 4  # the prompts follow prefix_indices
    assert prefix_indices(replace(spec, seed=6)) != prefix_indices(spec)  # and the seed decides it
    # the suffixes are drawn as for cyclic: the same texts, paired with other prefixes
    shuffled = [c.turns[0].prompt for c in build(spec, tok)]
    assert {p[-20:] for p in shuffled} == {p[-20:] for p in cyclic}


def test_prefix_order_defaults_to_cyclic_and_rejects_unknown_orders() -> None:
    assert DatasetSpec("prefix").prefix_order == "cyclic"
    assert prefix_indices(DatasetSpec("prefix", num_requests=6, num_prefixes=4)) == [0, 1, 2, 3, 0, 1]
    picks = prefix_indices(DatasetSpec("prefix", num_requests=6, num_prefixes=4, prefix_order="random"))
    assert sorted(picks) == [0, 0, 1, 1, 2, 3]
    with pytest.raises(ValueError, match="--prefix-order"):
        DatasetSpec("prefix", prefix_order="zigzag")


def test_multiturn_counts_turns_as_requests(tok) -> None:  # noqa: ANN001
    convs = build(DatasetSpec("multiturn", num_requests=10, input_len=20, turns=4), tok)
    assert [len(c.turns) for c in convs] == [4, 4, 2]
    assert [t.turn for t in convs[0].turns] == [0, 1, 2, 3]


def test_missing_tokenizer_is_a_clear_error() -> None:
    with pytest.raises(TokenizerNotFound, match="--tokenizer"):
        load_tokenizer("no-such-model")
