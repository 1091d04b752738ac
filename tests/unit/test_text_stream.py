"""TextStream: token bytes -> safe text deltas; stop strings across pieces; never half a character."""

from __future__ import annotations

import random

import pytest

from serve.backends.text_stream import TextStream


def run(pieces: list[bytes], stops: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:
    ts = TextStream(stops)
    out = [ts.push(p) for p in pieces]
    out.append(ts.flush())
    return out, ts


def test_no_stops_passes_text_straight_through() -> None:
    out, ts = run([b"Hel", b"lo", b" world"])
    assert out == ["Hel", "lo", " world", ""] and not ts.stopped


def test_stop_split_across_pieces_is_caught_and_excluded() -> None:
    out, ts = run([b"Hello wo", b"rld! ST", b"OP and more", b"ignored"], stops=("STOP",))
    assert "".join(out) == "Hello world! "
    assert ts.stopped
    assert out[2:] == ["", "", ""]  # nothing after the stop, flush included


def test_stop_inside_one_piece_cuts_there() -> None:
    out, ts = run([b"abc</s>def"], stops=("</s>",))
    assert out[0] == "abc" and ts.stopped


def test_possible_stop_prefix_is_held_back_then_released() -> None:
    ts = TextStream(("STOP",))
    assert ts.push(b"abc S") == "abc "  # "S" might begin "STOP"
    assert ts.push(b"T") == ""  # "ST" still might
    assert ts.push(b"x") == "STx"  # it did not: released in order
    assert not ts.stopped


def test_flush_releases_held_text_at_the_end() -> None:
    ts = TextStream(("STOP",))
    assert ts.push(b"end ST") == "end "
    assert ts.flush() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    out, ts = run([b"one two three"], stops=("three", "two"))
    assert out[0] == "one " and ts.stopped


def test_overlapping_stop_candidates_hold_the_longest_prefix() -> None:
    ts = TextStream(("ab", "abcd"))
    assert ts.push(b"xa") == "x"
    assert ts.push(b"b") == ""  # "ab" is a full stop: cut here
    assert ts.stopped


def test_multibyte_character_split_is_never_emitted_half() -> None:
    ts = TextStream()
    data = "é😀".encode()  # 2-byte and 4-byte characters
    out = [ts.push(data[i:i + 1]) for i in range(len(data))]
    assert out == ["", "é", "", "", "", "😀"]
    assert ts.flush() == ""


def test_truncated_character_at_the_end_becomes_one_replacement_on_flush() -> None:
    ts = TextStream()
    assert ts.push("a😀".encode()[:3]) == "a"
    assert ts.flush() == "\ufffd"


TEXTS = ["Bonjour, ça va? Très bien — 😀 merci. STOP après", "日本語のテキスト<|im_end|>続き", "no stop here ✓ é è"]
STOPS = [("STOP",), ("<|im_end|>", "テキストX"), ("zzz", "é è!")]


@pytest.mark.parametrize(("text", "stops"), list(zip(TEXTS, STOPS, strict=True)))
@pytest.mark.parametrize("seed", range(20))
def test_random_splits_equal_the_whole_text_up_to_the_stop(text: str, stops: tuple[str, ...], seed: int) -> None:
    data, rng = text.encode(), random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 25))))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    out, ts = run(pieces, stops)
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    assert "".join(out) == expected
    assert ts.stopped == bool(hits)
    assert all("\ufffd" not in o for o in out)
