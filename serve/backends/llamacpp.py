"""`llamacpp` backend: GGUF models through llama-cpp-python, batched in-process (see llamacpp_engine)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from serve import model_store
from serve.backends.base import (
    BackendError,
    BackendUnavailable,
    Delta,
    GenerateRequest,
    ModelInfo,
    StreamEvent,
    TokenLogprob,
    Usage,
)
from serve.backends.llamacpp_spec import SPEC_OPTION_TYPES, spec_config_from_options
from serve.backends.merge import merge
from serve.config import ReplicaSpec
from serve.sampling_params import LOGPROBS_MODES

_OPTION_TYPES = {"n_parallel": int, "n_ctx_per_seq": int, "n_batch": int, "n_threads": int, "logprobs_mode": str}
_KNOWN = {**_OPTION_TYPES, **SPEC_OPTION_TYPES}


class LlamaCppBackend:
    name = "llamacpp"

    def __init__(self, spec: ReplicaSpec) -> None:
        unknown = set(spec.options) - set(_KNOWN)
        if unknown:
            raise ValueError(f"unknown llamacpp option(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(_KNOWN)}")
        mode = spec.options.get("logprobs_mode", LOGPROBS_MODES[0])
        if mode not in LOGPROBS_MODES:
            raise ValueError(f"unknown logprobs_mode {mode!r}; choose one of: {', '.join(LOGPROBS_MODES)}")
        self.spec_config = spec_config_from_options(spec.options)  # bad speculative keys fail now
        self.spec = spec
        self.engine: Any = None
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        if self._info is None:
            raise BackendUnavailable("llamacpp backend is not started")
        return self._info

    async def start(self) -> None:
        path = await asyncio.to_thread(model_store.resolve, self.spec.model)
        if path.suffix != ".gguf":
            raise ValueError(f"the llamacpp backend needs a .gguf file, got {path}")
        from serve.backends.llamacpp_engine import LlamaCppEngine, LlamaCppOptions

        plain = {k: _OPTION_TYPES[k](v) for k, v in self.spec.options.items() if k in _OPTION_TYPES}
        opts = LlamaCppOptions(str(path), spec=self.spec_config, **plain)
        self.engine = await asyncio.to_thread(LlamaCppEngine, opts)
        self._info = self._model_info()

    def _model_info(self) -> ModelInfo:
        m = self.engine.model
        meta = m.metadata()
        return ModelInfo(
            max_model_len=self.engine.opts.n_ctx_per_seq,
            vocab_size=self.engine.n_vocab,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=self.engine.token_text(m.token_bos()) if m.token_bos() >= 0 else "",
            eos_token=self.engine.token_text(m.token_eos()) if m.token_eos() >= 0 else "",
            extra={"gguf_arch": meta.get("general.architecture", "")},
        )

    async def stop(self) -> None:
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await asyncio.to_thread(engine.close)

    async def check_health(self) -> bool:
        return self.engine is not None and self.engine._thread.is_alive()

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._engine().tokenize(text, add_special, parse_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return self._engine().detokenize(token_ids)

    def stats(self) -> dict[str, float]:
        return self.engine.stats() if self.engine is not None else {}

    def _engine(self) -> Any:
        if self.engine is None:
            raise BackendUnavailable("llamacpp backend is not running")
        return self.engine

    async def abort(self, request_id: str) -> None:
        if self.engine is not None:
            self.engine.abort(request_id)

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        if request.prompt_token_ids is None:
            raise BackendError("llamacpp backend needs prompt token ids", 500)
        n = request.params.n
        streams = [self._one(request, i) for i in range(n)]
        return merge(streams, [0] * n, shared_prompt=True)  # each stream already carries its index

    async def _one(self, request: GenerateRequest, index: int) -> AsyncIterator[StreamEvent]:
        from serve.backends.llamacpp_engine import Finished, Job

        engine = self._engine()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def emit(kind: str, payload: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

        matcher = await self._matcher(request)
        engine.submit(Job(request.request_id, list(request.prompt_token_ids or ()), request.params, emit,
                          seed_offset=index, cache_salt=request.cache_salt, matcher=matcher))
        finished = False
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "token":
                    yield self._delta(index, payload, request.params.logprobs)
                    continue
                assert isinstance(payload, Finished)
                finished = True
                if payload.reason == "error":
                    raise BackendError(f"generation failed: {payload.error}")
                yield Delta(index, text=payload.tail, finish_reason=payload.reason)
                yield Usage(payload.prompt_tokens, payload.completion_tokens, payload.cached_tokens,
                            payload.queue_time)
                return
        finally:
            if not finished:
                engine.abort(request.request_id)

    async def _matcher(self, request: GenerateRequest) -> Any:
        """The request's grammar matcher (one per sample), or None; a spec that does not compile is a 400."""
        spec = request.params.structured
        if spec is None:
            return None
        try:
            return await asyncio.to_thread(lambda: self._engine().grammar_factory().matcher(spec))
        except ValueError as e:
            raise BackendError(str(e), 400, "invalid_request_error") from e

    def _delta(self, index: int, payload: Any, k: int | None) -> Delta:
        text, token, lp, top = payload
        logprobs = None
        if k is not None:
            tt = self.engine.token_text
            logprobs = (TokenLogprob(tt(token), lp, token, top=tuple((tt(t), v) for t, v in top)),)
        return Delta(index, text=text, token_ids=(token,), logprobs=logprobs)
