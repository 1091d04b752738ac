"""Backends chosen by name. Imported lazily: a GGUF server never pays for vLLM's import, and an
optional engine that is not installed fails with one clear line only when asked for."""

from __future__ import annotations

import importlib

from serve.backends.base import Backend
from serve.config import ReplicaSpec

BACKENDS: dict[str, str] = {
    "llamacpp": "serve.backends.llamacpp:LlamaCppBackend",
    "native": "serve.backends.native:NativeBackend",
    "vllm": "serve.backends.vllm:VLLMBackend",
    "remote": "serve.backends.remote:RemoteBackend",
}


class BackendNotAvailable(ValueError):
    pass


def create_backend(spec: ReplicaSpec) -> Backend:
    target = BACKENDS.get(spec.backend)
    if target is None:
        raise BackendNotAvailable(f"unknown backend {spec.backend!r}; choose one of: {', '.join(BACKENDS)}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise BackendNotAvailable(f"the {spec.backend} backend is not available: {e}") from e
    return getattr(module, cls_name)(spec)
