"""Is AMX safe to use here? Decided by running it in a throwaway process, once per CPU and kernel.

A CPU can list amx_tile/amx_int8 and still fault on the first tile instruction (seen in a Firecracker
VM: SIGILL in ggml's AMX path, in an OpenMP worker thread). Nothing in the server may find that out
by dying, so amx_probe.c runs the instructions in a child process first; the verdict is cached under
~/.cache/sluice/amx_probe keyed by CPU model, flags and kernel release.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from sluice_kernels.cpu.features import CpuInfo, cpu_info

log = logging.getLogger(__name__)
_SOURCE = Path(__file__).with_name("amx_probe.c")
_NEEDED = ("amx_tile", "amx_int8")


@dataclass(frozen=True)
class AmxVerdict:
    usable: bool
    reason: str


def interpret(returncode: int, output: str) -> AmxVerdict:
    """A probe's exit status -> verdict. Negative codes are signals (subprocess convention)."""
    if returncode == 0:
        return AmxVerdict(True, "tile instructions ran in the main and a worker thread")
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return AmxVerdict(False, f"probe died with {name}")
    return AmxVerdict(False, f"probe exited {returncode}: {output.strip() or 'no output'}")


def run_probe(cmd: list[str], timeout: float = 30.0) -> AmxVerdict:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return AmxVerdict(False, "probe timed out")
    except OSError as e:
        return AmxVerdict(False, f"probe could not run: {e}")
    return interpret(done.returncode, done.stdout + done.stderr)


def _compile(workdir: Path) -> list[str] | AmxVerdict:
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return AmxVerdict(False, "no C compiler to build the probe")
    exe = workdir / "amx_probe"
    flags = ["-O1", "-mamx-tile", "-mamx-int8", "-pthread"]
    done = subprocess.run([cc, *flags, str(_SOURCE), "-o", str(exe)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return AmxVerdict(False, f"probe did not compile: {done.stderr.strip()[-200:]}")
    return [str(exe)]


def _cache_file(info: CpuInfo) -> Path:
    key = "\n".join([info.model, " ".join(sorted(info.flags)), platform.release()])
    root = Path(os.environ.get("SLUICE_CACHE", Path.home() / ".cache" / "sluice"))
    return root / "amx_probe" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def probe(info: CpuInfo) -> AmxVerdict:
    """Run the probe for this CPU (no cache)."""
    if info.machine not in ("x86_64", "AMD64"):
        return AmxVerdict(False, f"no AMX on {info.machine}")
    missing = [f for f in _NEEDED if f not in info.flags]
    if missing:
        return AmxVerdict(False, f"CPU does not list {', '.join(missing)}")
    with tempfile.TemporaryDirectory(prefix="sluice-amx-") as tmp:
        cmd = _compile(Path(tmp))
        return cmd if isinstance(cmd, AmxVerdict) else run_probe(cmd)


@functools.cache
def amx_usable() -> AmxVerdict:
    """The cached verdict for this machine; SLUICE_AMX=0 turns AMX off without probing."""
    if os.environ.get("SLUICE_AMX", "1") == "0":
        return AmxVerdict(False, "disabled by SLUICE_AMX=0")
    info = cpu_info()
    path = _cache_file(info)
    try:
        return AmxVerdict(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        pass
    verdict = probe(info)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(verdict)))
    if not verdict.usable and "does not list" not in verdict.reason:
        log.warning("AMX listed by the CPU but not usable here: %s", verdict.reason)
    return verdict
