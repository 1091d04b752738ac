"""Regression (#12 item 5): the llama.cpp engine releases text held back for a possible stop string
when a request ends on EOS, not only on `length`. Drives the real engine's emit path with chosen tokens
(no sampling), under the engine's lock so its thread stays idle."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve.backends.llamacpp_engine import Finished, Job, LlamaCppEngine
from serve.engine.batch import SampledToken
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import llamacpp_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    yield from llamacpp_engine(n_parallel=1, n_ctx_per_seq=256, n_threads=1)


def _drive(engine: LlamaCppEngine, text: str, end_token: int | None, stop: tuple[str, ...],
           max_tokens: int = 64) -> tuple[str, Finished]:
    got: list[object] = []
    job = Job("r", engine.tokenize("Say hi.", True), SamplingParams(max_tokens=max_tokens, stop=stop),
              emit=lambda kind, payload: got.append(payload))
    tokens = engine.tokenize(text, False) + ([end_token] if end_token is not None else [])
    with engine._cv:  # the engine thread waits on this lock: it cannot step our job
        engine._place(job, 0)
        for tok in tokens:
            if 0 not in engine.running:
                break
            engine._emit(job, SampledToken(tok), job.pos)
        if 0 in engine.running:
            engine._finish(0, "abort")
    done = got[-1]
    assert isinstance(done, Finished)
    streamed = "".join(p[0] for p in got[:-1])  # type: ignore[index]
    return streamed + done.tail, done


def test_eos_releases_text_held_for_a_stop_string(engine: LlamaCppEngine) -> None:
    eos = min(engine.eog)
    text, done = _drive(engine, "Hello world.\n", eos, ("\n\nUser:",))
    assert done.reason == "stop"
    assert text == "Hello world.\n"


def test_stop_string_is_cut_and_nothing_after_it_leaks(engine: LlamaCppEngine) -> None:
    text, done = _drive(engine, "Hello world.\n\nUser: more", None, ("\n\nUser:",))
    assert done.reason == "stop"
    assert text == "Hello world."


def test_length_releases_the_held_tail(engine: LlamaCppEngine) -> None:
    n = len(engine.tokenize("Hello world.\n", False))
    text, done = _drive(engine, "Hello world.\n", None, ("\n\nUser:",), max_tokens=n)
    assert done.reason == "length"
    assert text == "Hello world.\n"
