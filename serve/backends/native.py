"""`native` backend: our own paged-KV engine (serve/engine + serve/worker) behind the Backend protocol.

Options (ReplicaSpec.options, see serve.engine.config.EngineConfig.from_options): dtype, device,
attention_backend, max_model_len, num_threads, quantization, block_size, kv_cache_bytes, enable_prefix_caching,
max_num_seqs, max_num_batched_tokens, enable_chunked_prefill, policy; speculative decoding (see
serve.spec_decode.config.SpecDecodeConfig): speculative_method (none | ngram | draft),
num_speculative_tokens, speculative_model, speculative_quantization, prompt_lookup_max,
prompt_lookup_min, speculative_disable_by_batch_size, speculative_adaptive. Per request, the body
field `num_speculative_tokens` (0 = off) lowers k.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from serve import model_store
from serve.backends.base import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    ModelInfo,
    StreamEvent,
    Usage,
)
from serve.backends.native_tokens import TokenTexts
from serve.config import ReplicaSpec
from serve.engine.async_engine import AsyncEngine, EngineDead, RequestStream
from serve.engine.config import EngineConfig
from serve.engine.request import RequestRejected

log = logging.getLogger("sluice.native")
# A crash loop (the engine dies again right after each restart) is given up after this many
# restarts within RESTART_WINDOW_S: the replica then stays down and its health says so.
MAX_RESTARTS, RESTART_WINDOW_S = 5, 60.0
# The constraint fields the engine honours through grammar masks (SamplingParams.structured;
# tools are a grammar too). The native backend declares no request field unsupported.
STRUCTURED_FIELDS = frozenset({"response_format", "structured_outputs", "tools", "tool_choice"})


class NativeBackend:
    name = "native"

    def __init__(self, spec: ReplicaSpec) -> None:
        EngineConfig.from_options("<model>", spec.options)  # unknown or bad options fail now, loudly
        self.spec = spec
        self.engine: AsyncEngine | None = None
        self.tokenizer: Any = None
        self._texts: TokenTexts | None = None
        self._info: ModelInfo | None = None
        self._ids = itertools.count()
        # Client request id -> engine request ids (a completions batch reuses one id for its prompts).
        self._live: dict[str, set[str]] = {}
        # Told when the engine dies (False) and when its replacement serves (True); the router's
        # replica sets it, so /health turns 503 at once rather than at the next probe.
        self.health_listener: Callable[[bool], None] | None = None
        self._config: EngineConfig | None = None
        self._restarts: list[float] = []
        self._restart_task: asyncio.Task[None] | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise BackendUnavailable("native backend is not started")
        return self._info

    async def start(self) -> None:
        from serve.engine.engine import LLMEngine

        path = await asyncio.to_thread(model_store.resolve, self.spec.model)
        config = self._config = EngineConfig.from_options(str(path), self.spec.options)
        # Loaded on the engine thread, which then runs every step: one OpenMP master (async_engine.py).
        self.engine = await AsyncEngine.launch(lambda: LLMEngine.from_config(config), self._on_death)
        llm = self.engine.engine
        self.tokenizer = llm.runner.tokenizer
        self._texts = TokenTexts(self.tokenizer)
        # The context a request can really get: the model's limit or the whole KV cache, if smaller
        # (+1: the last sampled token needs no KV slot). The HTTP layer fills max_tokens from this.
        cache_len = llm.runner.num_blocks * llm.runner.block_size + 1
        self._info = ModelInfo(
            max_model_len=min(llm.runner.max_model_len, cache_len),
            vocab_size=llm.runner.vocab_size,
            unsupported=frozenset(),
            chat_template=getattr(self.tokenizer, "chat_template", None),
            bos_token=getattr(self.tokenizer, "bos_token", None) or "",
            eos_token=getattr(self.tokenizer, "eos_token", None) or "",
            extra={"num_kv_blocks": llm.runner.num_blocks, "block_size": llm.runner.block_size,
                   "quantization": getattr(llm.runner.model, "quantization", "none")},
        )

    def _on_death(self, exc: BaseException) -> None:
        """The engine thread died (its streams already ended with an error): go down, restart."""
        if self.health_listener is not None:
            self.health_listener(False)
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            log.error("native engine crashed %d times in %.0f s; not restarting", len(self._restarts),
                      RESTART_WINDOW_S)
            return
        self._restart_task = asyncio.ensure_future(self._restart())

    async def _restart(self) -> None:
        from serve.engine.engine import LLMEngine

        config, old = self._config, self.engine
        assert config is not None
        if old is not None:
            await old.stop()
        log.warning("restarting the native engine")
        try:
            self.engine = await AsyncEngine.launch(lambda: LLMEngine.from_config(config), self._on_death)
        except Exception:  # noqa: BLE001 - stays down; health reports it
            log.exception("the native engine could not be restarted")
            self.engine = None
            return
        log.warning("the native engine is serving again")
        if self.health_listener is not None:
            self.health_listener(True)

    async def stop(self) -> None:
        if self._restart_task is not None and not self._restart_task.done():
            self._restart_task.cancel()
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.stop()

    async def check_health(self) -> bool:
        return self.engine is not None and self.engine.is_running

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        self._engine()
        return list(self.tokenizer.encode(text, add_special_tokens=add_special,
                                          split_special_tokens=not parse_special))

    async def detokenize(self, token_ids: list[int]) -> str:
        self._engine()
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=True))

    def stats(self) -> dict[str, float | int]:
        return dict(self.engine.stats()) if self.engine is not None else {}

    def _engine(self) -> AsyncEngine:
        if self.engine is None or not self.engine.is_running:
            raise BackendUnavailable("native backend is not running")
        return self.engine

    async def abort(self, request_id: str) -> None:
        if self.engine is not None:
            for rid in list(self._live.get(request_id, ())):
                self.engine.abort(rid)

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        engine = self._engine()
        ids = request.prompt_token_ids
        if ids is None:
            if request.prompt is None:
                raise BackendError("the native backend needs a prompt", 400, "invalid_request_error", "prompt")
            ids = tuple(self.tokenizer.encode(request.prompt, add_special_tokens=True))
        rid = f"{request.request_id}/{next(self._ids)}"
        try:
            outputs = engine.add_request(rid, ids, request.params, priority=request.priority,
                                         extra_stop_token_ids=tuple(request.extra.get("stop_token_ids", ())),
                                         cache_salt=request.cache_salt)
        except RequestRejected as e:
            code = "context_length_exceeded" if e.param in ("messages", "max_tokens") else None
            raise BackendError(str(e), 400, "invalid_request_error", e.param, code) from e
        except EngineDead as e:
            raise BackendUnavailable(str(e)) from e
        self._live.setdefault(request.request_id, set()).add(rid)
        return self._events(request, rid, outputs)

    async def _events(self, request: GenerateRequest, rid: str,
                      outputs: RequestStream) -> AsyncIterator[StreamEvent]:
        want_logprobs = request.params.logprobs is not None
        completion, leader = 0, None
        try:
            async for out in outputs:
                if out.error is not None:
                    raise BackendError(f"generation failed: {out.error}")
                if out.finished:
                    completion += out.num_output_tokens
                    leader = out if out.index == 0 else leader
                if out.new_token_ids or out.new_text or out.finished:
                    lps = self._texts.logprobs(out.logprobs) if want_logprobs and out.logprobs and self._texts \
                        else None
                    yield Delta(out.index, text=out.new_text, token_ids=tuple(out.new_token_ids),
                                logprobs=lps, finish_reason=out.finish_reason)
            if leader is not None:
                yield Usage(leader.num_prompt_tokens, completion, leader.num_cached_tokens, leader.queue_time_s)
        except EngineDead as e:  # a crash mid-request: 503 before the first token, an SSE error after
            raise BackendUnavailable(str(e)) from e
        finally:
            await outputs.aclose()  # aborts in the engine if unfinished
            live = self._live.get(request.request_id)
            if live is not None:
                live.discard(rid)
                if not live:
                    del self._live[request.request_id]

