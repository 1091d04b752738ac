from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.server_proc import MODEL, ServerProc, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """`sluice serve --backend llamacpp` on the bundled model, with a small admission limit
    so that the overload test can reach it."""
    s = start_server(["--backend", "llamacpp", "--max-outstanding", "6", "-o", "n_parallel=4"], tmp_path_factory.mktemp("srv"))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model() -> str:
    return MODEL
