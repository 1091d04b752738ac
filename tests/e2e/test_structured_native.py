"""The structured-output and tool-calling e2e tests of test_structured_e2e.py, again against a real
`sluice serve --backend native` with n-gram speculation on (verify rows masked per draft prefix)."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.e2e.server_proc import ServerProc, start_server
from tests.e2e.test_structured_e2e import (  # noqa: F401 - collected here against the native server
    test_auto_answers_text_or_a_call,
    test_json_object_and_text,
    test_parse_with_a_pydantic_model,
    test_streamed_tool_calls_reassemble,
    test_structured_outputs_extra_body,
    test_tool_call_round_trip,
    test_two_constraints_are_a_400_naming_the_field,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def native_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    s = start_server(["--backend", "native", "-o", "max_model_len=1024", "-o", "speculative_method=ngram",
                      "-o", "speculative_disable_by_batch_size=0"], tmp_path_factory.mktemp("native-structured"),
                     timeout_s=240)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(native_server: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{native_server.base_url}/v1", api_key="unused", max_retries=0, timeout=180)
