"""serve/structured on the bundled model's two vocabularies (the HF tokenizer the native engine uses,
the GGUF vocabulary as llama.cpp sees it): specs compile, matchers accept / roll back / fork / finish,
and a bitmask applied to logits leaves exactly the tokens the grammar allows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from serve.structured.bitmask import allowed_numpy, apply_bitmask_numpy, apply_bitmask_torch
from serve.structured.matcher import GrammarFactory, GrammarMatcher
from serve.structured.spec import StructuredSpec
from tests.unit.model_fixtures import gguf_path, llamacpp_engine

pytestmark = pytest.mark.slow

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def hf_tok():  # noqa: ANN201 - a transformers tokenizer
    from serve.models.loader import load_tokenizer

    return load_tokenizer(gguf_path())


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    yield from llamacpp_engine(n_parallel=1, n_ctx_per_seq=64, n_threads=1)


@pytest.fixture(scope="module", params=["hf", "gguf"])
def setup(request: pytest.FixtureRequest, hf_tok: object, engine: object):  # noqa: ANN201
    """(factory, encode text -> ids) for each vocabulary adapter."""
    if request.param == "hf":
        return GrammarFactory.for_hf(hf_tok), lambda s: hf_tok.encode(s, add_special_tokens=False)  # type: ignore[attr-defined]
    return engine.grammar_factory(), lambda s: engine.tokenize(s, False, False)  # type: ignore[attr-defined]


def _allowed(factory: GrammarFactory, m: GrammarMatcher) -> np.ndarray:
    mask = factory.new_bitmask(2)
    m.fill_bitmask(mask, 1)
    assert (mask[0] == -1).all()  # other rows untouched
    return np.flatnonzero(allowed_numpy(mask[1], factory.vocab_size))


def _feed(m: GrammarMatcher, ids: list[int]) -> None:
    for t in ids:
        assert m.accept(t), t


@pytest.mark.parametrize(("spec", "good", "bad"), [
    (StructuredSpec.json_schema(PERSON), '{"name":"Al","age":3}', '{"age":3}'),
    (StructuredSpec.json_schema(None), '{"a":[1,2]}', '[1,2]'),
    (StructuredSpec("regex", r"[0-9]{3}-[0-9]{4}"), "555-1234", "5551234"),
    (StructuredSpec.choices(["yes", "no"]), "no", "maybe"),
    (StructuredSpec("grammar", 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]+/'), "(1,22)", "(1,)"),
    (StructuredSpec("grammar", 'root ::= "(" [0-9]+ ")"'), "(42)", "()"),  # GBNF, converted
])
def test_spec_accepts_exactly_its_language(setup, spec: StructuredSpec, good: str, bad: str) -> None:
    factory, encode = setup
    m = factory.matcher(spec)
    _feed(m, encode(good))
    assert m.is_finished()
    assert _allowed(factory, m).tolist() == sorted(factory.eos_ids)  # complete: only EOS may follow
    m2 = factory.matcher(spec)
    assert not all(m2.accept(t) for t in encode(bad)) or not m2.is_finished()


@pytest.mark.parametrize("spec", [StructuredSpec("regex", "[a-"), StructuredSpec.json_schema({"type": "strin"}),
                                  StructuredSpec("grammar", "start: undefined_rule"),
                                  StructuredSpec("grammar", "root ::= (")])
def test_invalid_specs_raise_value_error(setup, spec: StructuredSpec) -> None:
    with pytest.raises(ValueError):
        setup[0].matcher(spec)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError):
        StructuredSpec("yaml", "x")  # type: ignore[arg-type]


def test_json_schema_text_keeps_property_order() -> None:
    spec = StructuredSpec.json_schema({"type": "object", "properties": {"z": {}, "a": {}}})
    assert spec.value.index('"z"') < spec.value.index('"a"')
    assert spec == StructuredSpec.json_schema(json.loads(spec.value))  # hashable, equal by value
    assert len({spec, StructuredSpec.json_schema(json.loads(spec.value))}) == 1


def test_mask_is_exactly_the_tokens_the_matcher_accepts(setup) -> None:
    """The oracle: try every token on a copy of the matcher (a JSON string in progress)."""
    factory, encode = setup
    m = factory.matcher(StructuredSpec.json_schema({"type": "object", "properties": {"k": {"enum": ["ab", "cd"]}},
                                                     "required": ["k"]}))
    _feed(m, encode('{"k":"'))
    allowed = set(_allowed(factory, m).tolist())
    accepted = {t for t in range(factory.vocab_size) if m.fork().accept(t)}
    assert allowed == accepted and allowed


def test_rollback_and_fork(setup) -> None:
    factory, encode = setup
    m = factory.matcher(StructuredSpec("regex", "(abc|abd)[0-9]"))
    ids = encode("abc")
    _feed(m, ids)
    before = _allowed(factory, m).tolist()
    twin = m.fork()
    _feed(m, encode("1"))
    assert m.is_finished() and not twin.is_finished()  # independent
    m.rollback(len(encode("1")))
    assert _allowed(factory, m).tolist() == before and not m.is_finished()
    m.rollback(len(ids))
    _feed(m, encode("abd7"))
    assert m.is_finished()
    with pytest.raises(ValueError):
        m.rollback(100)


def test_a_rejected_token_is_false_and_the_matcher_stays_in_error(setup) -> None:
    factory, encode = setup
    m = factory.matcher(StructuredSpec("regex", "[0-9]+"))
    assert not m.accept(encode("x")[0])
    assert m.is_error() and not m.is_finished() and m.error()


def test_eos_ids_are_the_engines_stop_tokens(engine: object, hf_tok: object) -> None:
    assert GrammarFactory.for_hf(hf_tok).eos_ids == [hf_tok.eos_token_id]  # type: ignore[attr-defined]
    assert engine.grammar_factory().eos_ids == sorted(engine.eog)  # type: ignore[attr-defined]


def test_special_tokens_are_never_grammar_text(engine: object) -> None:
    """`<|im_end|>` is a control token: a grammar for the literal text must not allow the token."""
    factory = engine.grammar_factory()  # type: ignore[attr-defined]
    control = engine.tokenize("<|im_end|>", False, True)  # type: ignore[attr-defined]
    assert len(control) == 1
    m = factory.matcher(StructuredSpec.choices(["<|im_end|>x"]))
    assert control[0] not in _allowed(factory, m)


def test_numpy_and_torch_masking_agree_with_the_mask(setup) -> None:
    factory, encode = setup
    m = factory.matcher(StructuredSpec.choices(["red", "green", "blue"]))
    mask = factory.new_bitmask(1)
    m.fill_bitmask(mask, 0)
    allowed = set(_allowed(factory, m).tolist())
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(factory.vocab_size + 7).astype(np.float32)  # a padded vocabulary
    masked = logits.copy()
    apply_bitmask_numpy(masked, mask[0])
    assert set(np.flatnonzero(np.isfinite(masked)).tolist()) == allowed
    t = torch.from_numpy(logits.copy()).unsqueeze(0)
    apply_bitmask_torch(t, torch.from_numpy(mask))
    assert torch.equal(t[0], torch.from_numpy(masked))
    tmask = factory.new_bitmask(1, kind="torch")
    m.fill_bitmask(tmask, 0)  # the torch path of fill_bitmask writes the same bits
    assert np.array_equal(tmask.numpy(), mask)
