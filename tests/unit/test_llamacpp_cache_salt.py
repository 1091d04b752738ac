"""llama.cpp slot reuse respects the cache salt: a slot's cached prefix serves only requests with the
salt it was written under (real engine, bundled GGUF, one slot so every request lands in it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from serve.backends.llamacpp_engine import Finished, Job, LlamaCppEngine
from serve.sampling_params import SamplingParams
from tests.unit.model_fixtures import llamacpp_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    yield from llamacpp_engine(n_parallel=1, n_ctx_per_seq=256, n_batch=64, n_threads=1)


def cached_tokens(engine: LlamaCppEngine, prompt: list[int], salt: str | None) -> int:
    done = threading.Event()
    result: list[Finished] = []

    def emit(kind: str, payload: object) -> None:
        if kind == "done":
            assert isinstance(payload, Finished)
            result.append(payload)
            done.set()

    engine.submit(Job("r", prompt, SamplingParams(max_tokens=1, temperature=0.0), emit, cache_salt=salt))
    assert done.wait(60)
    assert result[0].reason == "length"
    return result[0].cached_tokens


def test_a_slot_is_reused_only_under_the_same_salt(engine: LlamaCppEngine) -> None:
    prompt = engine.tokenize("The river keeps flowing past the old mill and the stone bridge. " * 3, False)
    assert cached_tokens(engine, prompt, "tenant-a") == 0
    assert cached_tokens(engine, prompt, "tenant-a") == len(prompt) - 1  # all but the last, recomputed
    assert cached_tokens(engine, prompt, "tenant-b") == 0
    assert cached_tokens(engine, prompt, "tenant-b") == len(prompt) - 1
    assert cached_tokens(engine, prompt, None) == 0
