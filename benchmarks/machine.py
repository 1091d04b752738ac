"""Facts about where a benchmark ran: CPU, cores, memory, OS, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    from sluice_kernels.cpu.features import cpu_info

    return cpu_info().model


def machine_info() -> dict[str, Any]:
    import psutil

    return {
        "cpu_model": cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "hostname": platform.node(),
        # Read after the run, so it counts the benchmark itself: wording about load comes from
        # machine["load"] (benchmarks/machine_load.py), measured before and during the run.
        "load_avg_1m": round(os.getloadavg()[0], 2),
        # A ratio holds for the CPU it was measured on: its ISA extensions and the paths chosen for it.
        "cpu_flags": isa_flags(),
        "code_paths": code_paths(),
    }


_ISA_PREFIXES = ("avx", "amx", "fma", "f16c", "bmi", "sse4", "vnni")


def isa_flags() -> list[str]:
    from sluice_kernels.cpu.features import cpu_info

    return sorted(f for f in cpu_info().flags if f.startswith(_ISA_PREFIXES))


def code_paths() -> dict[str, str]:
    """Which CPU code path each engine takes on this machine (chosen at run time, never at build)."""
    out: dict[str, str] = {}
    try:
        from sluice_kernels import cpu

        chosen = cpu.choose_path() if cpu.unavailable_reason() is None else None
        out["sluice_cpu_kernels"] = chosen.name if chosen else f"off ({cpu.unavailable_reason()})"
        from sluice_kernels.cpu.amx_probe import amx_usable

        out["amx"] = amx_usable().reason
        from serve.backends.llamacpp_build import is_built
        from serve.backends.llamacpp_loader import pick_variant

        out["llama_cpp_cpu_variant"] = pick_variant()[0].name if is_built() else "not built"
    except Exception as e:  # a record must still be written where a probe fails
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def git_commit(repo: Path | None = None) -> str | None:
    """HEAD of the repository holding this package, with '-dirty' when the tree has changes."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")
