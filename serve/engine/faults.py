"""Fault injection for the chaos tests: crash the engine from inside a step, on purpose.

Off unless the environment asks for it, read once per process:
  SLUICE_FAULT_ENGINE_CRASH_AT_STEP=N   the N-th engine step raises (once per process, so the engine
                                         that replaces the crashed one runs normally).
"""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    """Raised by an armed fault; never seen unless a test armed one."""


_crash_at = int(os.environ.get("SLUICE_FAULT_ENGINE_CRASH_AT_STEP", "0") or 0)


def on_engine_step(step: int) -> None:
    global _crash_at
    if _crash_at and step >= _crash_at:
        _crash_at = 0
        raise InjectedFault(f"injected engine crash at step {step}")


def arm_engine_crash(at_step: int) -> None:
    """In-process tests arm it directly (the env var is for server processes)."""
    global _crash_at
    _crash_at = at_step
