"""Incremental detokenizer: never half a character, stop strings across tokens, held-back prefixes.

Uses a real byte-level BPE tokenizer (the `tokenizers` library), trained in memory on a few strings
so that emoji and CJK characters are split across several tokens.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from serve.engine.detokenizer import IncrementalDetokenizer, make_decode
from tests.requirements import model_missing, require

TEXT = "hi 🎉 日本語 and the STOP word, then more text after it"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    t.train_from_iterator(["hello world, the stop word is STOP here", "emoji 🎉 and 日本語 text",
                           "then more text after it"], trainer)
    return t


def stream(tok: Tokenizer, text: str, stop: tuple[str, ...] = (), prompt: str = "say:"
           ) -> tuple[list[str], IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(make_decode(tok), tok.encode(prompt).ids, stop)
    pieces = []
    for tid in tok.encode(text).ids:
        hit = detok.add_token(tid)
        pieces.append(detok.take_new_text())
        if hit:
            break
    detok.flush()
    pieces.append(detok.take_new_text(finished=True))
    return pieces, detok


def test_the_stream_reassembles_the_text_and_never_splits_a_character(tok: Tokenizer) -> None:
    ids = tok.encode(TEXT).ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # the test really has split characters
    pieces, _ = stream(tok, TEXT)
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)


def test_a_stop_string_spanning_tokens_ends_output_before_it(tok: Tokenizer) -> None:
    pieces, detok = stream(tok, TEXT, stop=("ST" + "OP w",))
    assert "".join(pieces) == "hi 🎉 日本語 and the "
    assert detok.stop_hit == "STOP w"


def test_a_possible_stop_prefix_is_held_then_released_when_it_does_not_match(tok: Tokenizer) -> None:
    detok = IncrementalDetokenizer(make_decode(tok), [], ("the STOPPER",))
    emitted = ""
    for tid in tok.encode("and the STOP word").ids:
        detok.add_token(tid)
        emitted += detok.take_new_text()
        assert not emitted.endswith("the STOP")  # "the STOP" might still become the stop string
    assert detok.stop_hit is None
    assert emitted + detok.take_new_text(finished=True) == "and the STOP word"


def test_the_earliest_of_several_stop_strings_wins(tok: Tokenizer) -> None:
    pieces, detok = stream(tok, TEXT, stop=("more", "日本"))
    assert "".join(pieces) == "hi 🎉 " and detok.stop_hit == "日本"


def test_a_dangling_partial_character_is_flushed_at_finish(tok: Tokenizer) -> None:
    ids = tok.encode("x 🎉").ids
    detok = IncrementalDetokenizer(make_decode(tok), [], ())
    for tid in ids[:-1]:  # the emoji's last byte never arrives
        detok.add_token(tid)
    held = detok.take_new_text()
    assert "\ufffd" not in held
    detok.flush()
    assert (held + detok.take_new_text(finished=True)).endswith("\ufffd")


def test_leading_space_of_the_first_output_token_is_kept(tok: Tokenizer) -> None:
    pieces, _ = stream(tok, " then more", prompt="hello world,")
    assert "".join(pieces) == " then more"


@pytest.fixture(scope="module")
def smollm_tok():  # type: ignore[no-untyped-def]
    from serve import model_store

    if not model_store.is_pulled("smollm2-135m-instruct"):
        require("model", model_missing())
    from serve.models.loader import load_tokenizer

    return load_tokenizer(model_store.model_path("smollm2-135m-instruct"))


@pytest.mark.slow
def test_the_bundled_tokenizer_streams_multibyte_text_and_stops_across_tokens(smollm_tok) -> None:  # type: ignore[no-untyped-def]
    from serve.backends.native_tokens import TokenTexts

    text = "Hello 🎉 日本語 world, the end."
    ids = smollm_tok.encode(text, add_special_tokens=False)
    detok = IncrementalDetokenizer(make_decode(smollm_tok), smollm_tok.encode("Say:", add_special_tokens=False))
    pieces = []
    for tid in ids:
        detok.add_token(tid)
        pieces.append(detok.take_new_text())
    pieces.append(detok.take_new_text(finished=True))
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)
    raw = b"".join(bytes(TokenTexts(smollm_tok).get(i)[1]) for i in ids)
    assert raw.decode("utf-8") == text  # per-token bytes reassemble the exact UTF-8
    stop_detok = IncrementalDetokenizer(make_decode(smollm_tok), [], ("語 wor",))
    out = ""
    for tid in ids:
        hit = stop_detok.add_token(tid)
        out += stop_detok.take_new_text()
        if hit:
            break
    assert out + stop_detok.take_new_text(finished=True) == "Hello 🎉 日本"
