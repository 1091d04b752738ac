"""Peak resident memory of a server's process tree, read from /proc (Linux).

VmHWM is each process's own high-water mark; the tree's figure is their sum, an upper bound of the
true simultaneous peak (children may peak at different times). Engines that fork workers (vLLM)
need the tree; in-process engines (sluice native / llamacpp) are one process.
"""

from __future__ import annotations

from pathlib import Path


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_peak_rss_mib(pid: int) -> float | None:
    """Sum of VmHWM over `pid` and all its descendants, MiB; None when /proc has no such process."""
    if not Path(f"/proc/{pid}").exists():
        return None
    seen, todo, total = set(), [pid], 0
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _hwm_kib(p)
        todo += _children(p)
    return round(total / 1024, 1)
