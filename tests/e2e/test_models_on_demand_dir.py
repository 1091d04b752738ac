"""Models on demand from `--models-dir`, with `--idle-unload`: a real server (llamacpp, small context).

The directory holds the bundled SmolLM2 GGUF under another file name (a symlink): the server lists it by
that file's stem, loads it at its first request (a /tokenize is enough), unloads it after 2 idle
seconds (/v1/models, /v1/stats and the model_state metric say so), and loads it again for the next one.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from serve import model_store
from tests.e2e.server_proc import ServerProc, start_server
from tests.requirements import model_missing, require

SMOL = "smollm2-135m-instruct"
NAME = "tiny-smol"  # served name: the stem of DIR/tiny-smol.gguf
IDLE_S = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    require("model", model_missing(SMOL))
    models = tmp_path_factory.mktemp("models")
    (models / f"{NAME}.gguf").symlink_to(model_store.model_path(SMOL))
    (models / "notes.txt").write_text("not a model: ignored")
    s = start_server(["--models-dir", str(models), "--idle-unload", f"{IDLE_S:g}", "--backend", "llamacpp",
                      "-o", "n_parallel=1", "-o", "n_ctx_per_seq=512"], tmp_path_factory.mktemp("ondemand-dir"))
    yield s
    s.stop()


def _status(server: ServerProc) -> str:
    cards = httpx.get(f"{server.base_url}/v1/models", timeout=5).json()["data"]
    assert [c["id"] for c in cards] == [NAME]
    return cards[0]["status"]


def _loads(server: ServerProc) -> int:
    models = httpx.get(f"{server.base_url}/v1/stats", timeout=5).json()["models"]
    return next(m["loads"] for m in models if m["name"] == NAME)


def _wait_unloaded(server: ServerProc, since: float) -> float:
    """Seconds from `since` until the model is reported unloaded (fails after a bounded wait)."""
    for _ in range(150):
        if _status(server) == "unloaded":
            return time.monotonic() - since
        time.sleep(0.1)
    pytest.fail(f"{NAME} still {_status(server)} {time.monotonic() - since:.1f} s after its last request")


def test_models_dir_serves_the_file_by_its_stem_unloaded(server: ServerProc) -> None:
    assert _status(server) == "unloaded"
    assert httpx.get(f"{server.base_url}/health", timeout=5).json()["models"] == {NAME: "unloaded"}


def test_tokenize_loads_the_model(server: ServerProc) -> None:
    r = httpx.post(f"{server.base_url}/tokenize", json={"model": NAME, "prompt": "Hello there"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["count"] > 0 and _status(server) == "loaded" and _loads(server) == 1
    r = httpx.post(f"{server.base_url}/detokenize", json={"model": NAME, "tokens": r.json()["tokens"]}, timeout=30)
    assert r.status_code == 200 and "Hello there" in r.json()["prompt"], r.text


def test_idle_model_unloads_and_the_next_request_loads_it_again(server: ServerProc) -> None:
    body = {"model": NAME, "prompt": "The capital of France is", "max_tokens": 4}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text
    done = time.monotonic()
    assert _status(server) == "loaded"
    loads = _loads(server)
    idle = _wait_unloaded(server, done)
    # Not before it was idle IDLE_S (less a little: the server's clock starts at the release, just before
    # the answer reached us); the idle loop looks every IDLE_S / 4, hence the upper bound.
    assert IDLE_S - 0.3 <= idle < IDLE_S + 10, idle
    metrics = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert f'sluice:model_state{{model="{NAME}",state="unloaded"}} 1.0' in metrics
    assert f'sluice:model_state{{model="{NAME}",state="loaded"}} 0.0' in metrics
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text
    assert _status(server) == "loaded" and _loads(server) == loads + 1
