"""Continuous batching over llama.cpp's C API: one context, one sequence id per slot.

Every step packs decode tokens of running sequences and prompt chunks of new ones (chunked prefill,
bounded by `n_batch`) into a single `llama_decode`. With prompt-lookup speculation on, a decoding
sequence also submits the drafts proposed from its own prompt and output, logits for every row, and
`_deliver` keeps the accepted prefix and removes the rest from the slot's KV. A new request takes the free slot whose cached
tokens share the longest prefix with its prompt and computes only the rest (per-slot prefix reuse,
as llama-server does). The loop runs in its own thread; llama.cpp releases the GIL while it computes.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from serve.backends.llamacpp_loader import load_llama_cpp
from serve.backends.llamacpp_sampling import StepSampler, ToSample
from serve.backends.llamacpp_spec import PromptLookupConfig, SpecState
from serve.backends.llamacpp_vocab import common_prefix, cores, special_ids, token_piece
from serve.backends.text_stream import TextStream
from serve.engine.batch import SampledToken
from serve.sampling_params import LOGPROBS_MODES, SamplingParams
from serve.spec_decode.stats import SpecDecodeStats
from serve.structured.matcher import GrammarFactory, GrammarMatcher

llama_cpp = load_llama_cpp()  # the portable build, CPU variant chosen for this machine
_internals = importlib.import_module("llama_cpp._internals")
_logger = importlib.import_module("llama_cpp._logger")
log = logging.getLogger("sluice.llamacpp")


@dataclass(frozen=True)
class LlamaCppOptions:
    model_path: str
    n_parallel: int = 8  # sequences decoded together (slots)
    n_ctx_per_seq: int = 4096  # context of each slot: the max model length we advertise
    n_batch: int = 512  # tokens per llama_decode (the step's token budget)
    n_threads: int | None = None  # default: every core
    spec: PromptLookupConfig | None = None  # prompt-lookup speculative decoding; None: off
    logprobs_mode: str = "raw_logprobs"  # or "processed_logprobs" (serve/sampling/logprobs.py)

    def __post_init__(self) -> None:
        if self.n_parallel < 1 or self.n_ctx_per_seq < 16 or self.n_batch < self.n_parallel:
            raise ValueError("need n_parallel >= 1, n_ctx_per_seq >= 16 and n_batch >= n_parallel")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"unknown logprobs_mode {self.logprobs_mode!r}; choose one of: {', '.join(LOGPROBS_MODES)}")


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "abort" | "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    queue_time: float = 0.0
    cached_tokens: int = 0
    tail: str = ""  # text held back for a possible stop string, released at the end
    error: str = ""


@dataclass
class Job:
    """One sequence to generate. `emit(kind, payload)` is called from the engine thread."""

    req_id: str
    prompt: list[int]
    params: SamplingParams
    emit: Callable[[str, object], None]  # ("token", (text, token_id, logprob, top)) | ("done", Finished)
    seed_offset: int = 0
    speculate: bool = True  # use the engine's speculation, if it has one configured
    cache_salt: str | None = None  # reuse only a slot whose cached prefix was written under this salt
    arrival: float = field(default_factory=time.monotonic)
    # Filled in by the engine.
    slot: int = -1
    pending: list[int] = field(default_factory=list)
    pos: int = 0
    n_out: int = 0
    cached: int = 0
    queue_time: float = 0.0
    key: str = ""  # the sampler's key for this job's state (its generator): req_id is shared by n samples
    output: list[int] = field(default_factory=list)  # tokens emitted so far (penalties count them)
    text: TextStream | None = None
    spec: SpecState | None = None  # proposer history; None when this job does not speculate
    drafts: list[int] = field(default_factory=list)  # proposed for the coming step, after `pending`
    # The output constraint's parse state (params.structured), built by the caller from
    # engine.grammar_factory() so that a bad spec fails before queueing. Constrained jobs never
    # speculate: prompt-lookup drafts would need masks per draft and matcher rollback.
    matcher: GrammarMatcher | None = None


class LlamaCppEngine:
    def __init__(self, opts: LlamaCppOptions) -> None:
        self.opts = opts
        _logger.set_verbose(False)  # llama.cpp logs every graph build at debug level otherwise
        mparams = llama_cpp.llama_model_default_params()
        self.model = _internals.LlamaModel(path_model=opts.model_path, params=mparams, verbose=False)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = opts.n_ctx_per_seq * opts.n_parallel
        cparams.n_batch = cparams.n_ubatch = opts.n_batch
        cparams.n_seq_max = opts.n_parallel
        cparams.kv_unified = False  # each slot attends only over its own cells
        threads = opts.n_threads or cores()
        cparams.n_threads = cparams.n_threads_batch = threads
        self.ctx = _internals.LlamaContext(model=self.model, params=cparams, verbose=False)
        self.batch = _internals.LlamaBatch(n_tokens=opts.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.n_vocab = self.model.n_vocab()
        self.eog = {t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.model.vocab, t)}
        # Token bytes, looked up once: plain pieces for output text, special ones for logprob labels.
        self.pieces = [token_piece(llama_cpp, self.model.vocab, t, False) for t in range(self.n_vocab)]
        self.special_pieces = [token_piece(llama_cpp, self.model.vocab, t, True) for t in range(self.n_vocab)]
        self._grammars: GrammarFactory | None = None
        self._grammars_lock = threading.Lock()
        self.sampling = StepSampler(self.ctx.get_logits_ith, self.n_vocab, opts.logprobs_mode,
                                    lambda: self.grammar_factory().vocab_size)
        self._keys = itertools.count()
        self.slot_tokens: list[list[int]] = [[] for _ in range(opts.n_parallel)]
        self.slot_used_at = [0.0] * opts.n_parallel
        self.slot_salt: list[str | None] = [None] * opts.n_parallel  # the salt of the slot's cached tokens
        self.spec_stats = SpecDecodeStats()
        self.running: dict[int, Job] = {}
        self.waiting: deque[Job] = deque()
        self._cv = threading.Condition()
        self._aborts: set[str] = set()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # ---- called from other threads -------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cv:
            self.waiting.append(job)
            self._cv.notify()

    def abort(self, req_id: str) -> None:
        with self._cv:
            self._aborts.add(req_id)
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            # Free llama.cpp's memory now rather than at garbage collection: an unloaded model
            # (models on demand) must give its weights and KV cache back before the next one loads.
            for part in (self.batch, self.ctx, self.model):
                part.close()

    def grammar_factory(self) -> GrammarFactory:
        """Built on first use (about a second for a 49k vocabulary), then shared by every request."""
        with self._grammars_lock:
            if self._grammars is None:
                special = self.special_ids()
                tokens = [self.special_pieces[t] if t in special else self.pieces[t] for t in range(self.n_vocab)]
                self._grammars = GrammarFactory.for_vocab(
                    tokens, sorted(self.eog), special,
                    lambda text: self.model.tokenize(text, add_bos=False, special=False))
            return self._grammars

    def special_ids(self) -> set[int]:
        """Control tokens, and user-defined ones spelled like `<...>`: never grammar text."""
        return special_ids(llama_cpp, self.model.vocab, self.special_pieces)

    def stats(self) -> dict[str, float]:
        return {"num_requests_running": len(self.running), "num_requests_waiting": len(self.waiting),
                **self.spec_stats.as_stats()}

    # ---- engine thread ---------------------------------------------------------------------------
    def _loop(self) -> None:
        self.sampling.run_on_this_thread()
        while True:
            with self._cv:
                while not self._stop and not self.running and not self.waiting:
                    self._cv.wait()
                if self._stop:
                    break
                self._reap_aborted()
                self._admit()
            if self.running:
                try:
                    self._step()
                except Exception as e:  # noqa: BLE001 - fail the batch's requests, keep serving
                    log.exception("llama_decode step failed")
                    for slot in list(self.running):
                        self._finish(slot, "error", str(e))
        for slot in list(self.running):
            self._finish(slot, "abort")
        for job in self.waiting:
            job.emit("done", Finished("abort", len(job.prompt)))

    def _reap_aborted(self) -> None:
        """Under the lock: apply aborts requested by other threads (only this thread mutates jobs)."""
        if not self._aborts:
            return
        for job in [j for j in self.waiting if j.req_id in self._aborts]:
            self.waiting.remove(job)
            job.emit("done", Finished("abort", len(job.prompt)))
        for slot in [s for s, j in self.running.items() if j.req_id in self._aborts]:
            self._finish(slot, "abort")
        self._aborts.clear()

    def _admit(self) -> None:
        free = [s for s in range(self.opts.n_parallel) if s not in self.running]
        while self.waiting and free:
            job = self.waiting.popleft()
            slot = max(free, key=lambda s: (self._reusable(s, job), -self.slot_used_at[s]))
            free.remove(slot)
            self._place(job, slot)

    def _reusable(self, slot: int, job: Job) -> int:
        """Cached prompt tokens the job may reuse in `slot`: none across tenants (a cache salt)."""
        if self.slot_salt[slot] != job.cache_salt:
            return 0
        return common_prefix(self.slot_tokens[slot], job.prompt)

    def _place(self, job: Job, slot: int) -> None:
        common = min(self._reusable(slot, job), len(job.prompt) - 1)  # recompute at least one token for logits
        self.slot_salt[slot] = job.cache_salt
        self.ctx.kv_cache_seq_rm(slot, common, -1)
        self.slot_tokens[slot] = job.prompt[:common]
        job.slot, job.pos, job.cached, job.pending = slot, common, common, job.prompt[common:]
        job.queue_time = time.monotonic() - job.arrival
        job.key, job.output = f"{job.req_id}#{next(self._keys)}", []
        job.text = TextStream(job.params.stop)
        if self.opts.spec is not None and job.speculate and job.params.num_speculative_tokens != 0 \
                and job.matcher is None:
            max_new = min(job.params.max_tokens or self.opts.n_ctx_per_seq, self.opts.n_ctx_per_seq)
            job.spec = SpecState.for_prompt(job.prompt, max_new)
        self.running[slot] = job

    def _step(self) -> None:
        """Pack decodes first (one token each, plus drafts), then prompt chunks, up to n_batch tokens."""
        self._propose_drafts()
        b = self.batch.batch
        n = 0
        wants: list[tuple[Job, int]] = []  # (job, first batch row whose logits we sample or verify)
        order = sorted(self.running.values(), key=lambda j: (len(j.pending) > 1, j.arrival))
        for job in order:
            room = self.opts.n_batch - n
            if room <= 0:
                break
            # Drafts always fit: _propose_drafts left a row for every running job.
            toks = job.pending + job.drafts if job.drafts else job.pending[:room]
            for i, tok in enumerate(toks):
                b.token[n + i], b.pos[n + i], b.n_seq_id[n + i] = tok, job.pos + i, 1
                b.seq_id[n + i][0] = job.slot
                b.logits[n + i] = bool(job.drafts)
            n += len(toks)
            self.slot_tokens[job.slot].extend(toks)
            job.pos += len(toks)
            del job.pending[: len(toks)]
            if not job.pending:
                b.logits[n - 1] = True
                wants.append((job, n - len(toks) if job.drafts else n - 1))
        b.n_tokens = n
        self.ctx.decode(self.batch)
        rows = [ToSample(job.key, job.params, job.prompt, job.output, job.seed_offset, row, job.drafts,
                         job.matcher) for job, row in wants]
        for (job, _), tokens in zip(wants, self._sample(rows), strict=True):
            if isinstance(tokens, Exception):
                self._finish(job.slot, "error", f"sampling failed: {tokens}")
            else:
                self._deliver(job, tokens)

    def _sample(self, rows: list[ToSample]) -> list[list[SampledToken] | Exception]:
        """The step's rows in one batch; if that raises, each row alone, so that one request's bad row
        fails that request and not every request of the step. Only draws taken before the failure
        are lost (a seeded row's stream moves on by one); grammar matchers are only read here."""
        try:
            return list(self.sampling.sample(rows))
        except Exception:  # noqa: BLE001 - narrowed to the failing rows below
            log.exception("sampling %d rows failed; sampling them one at a time", len(rows))
        out: list[list[SampledToken] | Exception] = []
        for row in rows:
            try:
                out.append(self.sampling.sample([row])[0])
            except Exception as e:  # noqa: BLE001 - this row's request ends with the error
                out.append(e)
        return out

    def _propose_drafts(self) -> None:
        """Prompt lookup for every decoding job that speculates, within the step's spare rows."""
        cfg = self.opts.spec
        if cfg is None or not cfg.active(len(self.running)):
            return
        spare = self.opts.n_batch - len(self.running)  # every running job needs one row
        for job in self.running.values():
            if job.spec is None or job.n_out == 0 or len(job.pending) != 1 or spare <= 0:
                continue
            # A verify step emits up to len(drafts) + 1 tokens: never draft past max_tokens or past the
            # last position at which the plain path would still write a token (pos <= n_ctx - 2).
            left = (job.params.max_tokens or 1 << 30) - job.n_out - 1
            k = min(cfg.num_speculative_tokens, job.params.num_speculative_tokens or 1 << 30, spare, left,
                    self.opts.n_ctx_per_seq - 3 - job.pos)
            job.drafts = job.spec.propose(cfg, job.spec.draft_len(k) if cfg.adaptive else k)
            spare -= len(job.drafts)

    def _deliver(self, job: Job, tokens: list[SampledToken]) -> None:
        """Emit a step's tokens: one, or (verifying drafts) the accepted drafts and the first mismatch or
        bonus token, exactly as the plain path would have emitted them one per step; drop the KV of
        the rejected drafts."""
        drafts, job.drafts = job.drafts, []
        if not drafts:
            self._emit(job, tokens[0], job.pos)
            return
        first = job.pos - len(drafts) - 1  # position of the last sampled token, fed at the first row
        accepted = 0
        for i, tok in enumerate(tokens):
            if self._emit(job, tok, first + i + 1) or i == len(tokens) - 1:
                break
            accepted += 1
        keep = first + accepted + 1  # the last sampled token and the accepted drafts stay in the KV
        self.ctx.kv_cache_seq_rm(job.slot, keep, -1)
        del self.slot_tokens[job.slot][keep:]
        job.pos = keep
        if job.spec is not None:
            job.spec.record(len(drafts), accepted)
        self.spec_stats.observe(job.req_id, len(drafts), accepted)
        self.spec_stats.last_step.clear()  # read by the native engine's adaptive k only; keep it empty

    def _emit(self, job: Job, sampled: SampledToken, pos: int) -> bool:
        """Deliver one sampled token; `pos` = tokens in the KV before it. True when the job finished."""
        assert job.text is not None
        token = sampled.token_id
        job.output.append(token)
        if job.spec is not None:
            job.spec.append(token)
        job.n_out += 1
        p = job.params
        is_stop_token = (token in self.eog and not p.ignore_eos) or token in p.stop_token_ids
        piece = b"" if is_stop_token else self.pieces[token]
        text = job.text.push(piece)
        job.emit("token", (text, token, sampled.logprob or 0.0, list(sampled.top_logprobs)))
        self.slot_used_at[job.slot] = time.monotonic()
        grammar_done = False
        if job.matcher is not None and not is_stop_token:
            if not job.matcher.accept(token):
                self._finish(job.slot, "error", f"output constraint rejected token {token}: {job.matcher.error()}")
                return True
            grammar_done = job.matcher.is_finished()  # only EOS could follow: end now, a step early
        if is_stop_token or job.text.stopped or grammar_done:
            self._finish(job.slot, "stop")
        elif job.n_out >= (p.max_tokens or 1 << 30) or pos + 1 >= self.opts.n_ctx_per_seq:
            self._finish(job.slot, "length")
        else:
            job.pending = [token]
            return False
        return True

    def _finish(self, slot: int, reason: str, detail: str = "") -> None:
        job = self.running.pop(slot)
        self.sampling.forget(job.key)
        # Text held back for a possible stop string is released on every ending but an error: ending
        # on EOS must not drop a tail like "\n" that only looked like the start of a stop string.
        tail = job.text.flush() if (job.text and reason != "error") else ""
        if reason in ("abort", "error"):
            # The slot's KV may hold a half-written chunk: forget it rather than trust it.
            self.ctx.kv_cache_seq_rm(slot, -1, -1)
            self.slot_tokens[slot] = []
        job.emit("done", Finished(reason, len(job.prompt), job.n_out, job.queue_time, job.cached, tail, detail))

    # ---- tokenizer (thread-safe: reads the vocabulary only) --------------------------------------
    def tokenize(self, text: str, add_special: bool, parse_special: bool = True) -> list[int]:
        return self.model.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, ids: list[int]) -> str:
        if any(not 0 <= t < self.n_vocab for t in ids):
            raise ValueError(f"token ids must be in [0, {self.n_vocab})")
        return b"".join(self.pieces[t] for t in ids).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        return self.special_pieces[token].decode("utf-8", errors="replace")

