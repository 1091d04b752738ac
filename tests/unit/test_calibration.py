"""Calibration sources: aliases, the even split of windows across sources, offline licence texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.quantize.calibration import (
    LICENSE_DIR,
    calibration_set,
    calibration_sources,
    read_calibration_text,
)


class WordIds:
    """A fake tokenizer (the tests are about window sampling): each word is its integer value."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(w) for w in text.split()]}


def _source(tmp_path: Path, name: str, lo: int, n: int) -> str:
    p = tmp_path / name
    p.write_text(" ".join(str(i) for i in range(lo, lo + n)))
    return str(p)


def test_aliases_expand_in_order_without_repeats() -> None:
    assert calibration_sources("mixed") == ["pydoc-topics", "licenses", "fortunes"]
    assert calibration_sources("licenses, mixed ,a.txt") == ["licenses", "pydoc-topics", "fortunes", "a.txt"]
    with pytest.raises(ValueError, match="empty calibration source"):
        calibration_sources("mixed,,a.txt")


def test_windows_split_evenly_across_sources(tmp_path: Path) -> None:
    a, b = _source(tmp_path, "a.txt", 0, 400), _source(tmp_path, "b.txt", 10_000, 400)
    w = calibration_set(WordIds(), f"{a},{b}", nsamples=5, seqlen=16, seed=3)
    assert tuple(w.shape) == (5, 16)
    from_a = [bool((row < 10_000).all()) for row in w]
    assert from_a == [True, True, True, False, False]  # 3 + 2, each window inside one source
    assert all(bool((row[1:] - row[:-1] == 1).all()) for row in w)  # contiguous spans of the text
    assert calibration_set(WordIds(), f"{a},{b}", 5, 16, seed=3).equal(w)  # seeded


def test_bad_sources_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_calibration_text(str(tmp_path / "missing.txt"))
    short = _source(tmp_path, "short.txt", 0, 8)
    with pytest.raises(ValueError, match="need more than seqlen"):
        calibration_set(WordIds(), short, 2, 16)
    with pytest.raises(ValueError, match="cannot cover 2 sources"):
        calibration_set(WordIds(), f"{short},{short}x", 1, 4)


@pytest.mark.skipif(not LICENSE_DIR.is_dir(), reason="no /usr/share/common-licenses on this system")
def test_licence_texts_are_read_once_each() -> None:
    text = read_calibration_text("licenses")
    assert text.count("GNU GENERAL PUBLIC LICENSE\n                       Version 3") == 1  # GPL is a link to GPL-3
    assert "Apache License" in text
