"""A row whose sampling raises fails its own request, not every request of the llama.cpp step (real
engine, bundled GGUF, two slots). The failure is injected: a labelled wrapper around the engine's
step sampler raises whenever a batch holds the "bad" request's row, as an unforeseen sampler bug
would."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest

from serve.backends.llamacpp_engine import Finished, Job, LlamaCppEngine
from serve.backends.llamacpp_sampling import ToSample
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import llamacpp_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    yield from llamacpp_engine(n_parallel=2, n_ctx_per_seq=256, n_batch=64, n_threads=1)


class Run:
    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.done = threading.Event()
        self.first = threading.Event()
        self.finished: Finished | None = None

    def emit(self, kind: str, payload: object) -> None:
        if kind == "token":
            self.tokens.append(payload[1])  # type: ignore[index]
            self.first.set()
        elif kind == "done":
            assert isinstance(payload, Finished)
            self.finished = payload
            self.done.set()


def test_a_failing_row_fails_only_its_request(engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    real = engine.sampling.sample
    shared_failures: list[int] = []

    def faulty(rows: Sequence[ToSample]) -> list:  # the injected fault (see the module docstring)
        if any(r.key.startswith("bad#") for r in rows):
            if len(rows) > 1:
                shared_failures.append(len(rows))
            raise RuntimeError("injected sampler fault")
        return real(rows)

    monkeypatch.setattr(engine.sampling, "sample", faulty)
    prompt = engine.tokenize("Write a long story about a lighthouse keeper and the sea.", False)
    good, bad = Run(), Run()
    engine.submit(Job("good", prompt, SamplingParams(max_tokens=48, temperature=0.0, ignore_eos=True), good.emit))
    assert good.first.wait(60)  # good is decoding: bad's first sampled row shares a step with it
    engine.submit(Job("bad", prompt[:5], SamplingParams(max_tokens=8, temperature=0.0), bad.emit))
    assert bad.done.wait(60) and good.done.wait(120)
    assert bad.finished is not None and bad.finished.reason == "error" and "injected sampler fault" in bad.finished.error
    assert bad.tokens == []
    assert good.finished is not None and good.finished.reason == "length", good.finished
    assert len(good.tokens) == 48
    assert shared_failures, "the bad row never shared a step with the good one"
    # The engine keeps serving: a new request after the failure runs to its end.
    after = Run()
    engine.submit(Job("after", prompt, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), after.emit))
    assert after.done.wait(60) and after.finished is not None and after.finished.reason == "length"
