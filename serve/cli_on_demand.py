"""`sluice serve` flags for models on demand: --model repeated, --models-dir, --models-max, --idle-unload.

Any of them turns the mode on: every model the server can resolve is served, none is loaded at start,
each loads at its first request (serve/router/on_demand.py).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from serve import model_store
from serve.config import DEFAULT_MODEL, ModelConfig, OnDemandConfig, ReplicaSpec


def add_on_demand_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("models on demand (any of these, or --model given twice, turns it on)")
    g.add_argument("--models-dir", default=None, metavar="DIR",
                   help="serve every model found in DIR (*.gguf files, HF-style directories with config.json)")
    g.add_argument("--models-max", type=int, default=None, metavar="N",
                   help="models loaded at once; loading one more unloads the least recently used idle one")
    g.add_argument("--idle-unload", type=float, default=None, metavar="SECONDS",
                   help="unload a model nobody used for this long")
    g.add_argument("--model-load-timeout", type=float, default=600.0, metavar="SECONDS",
                   help="a request waits at most this long for its model to load (default 600)")


def on_demand_config(args: argparse.Namespace) -> OnDemandConfig | None:
    wanted = (args.models_dir is not None or args.models_max is not None or args.idle_unload is not None
              or len(args.model or []) > 1)
    if not wanted:
        return None
    return OnDemandConfig(max_loaded=args.models_max or 0, idle_unload_s=args.idle_unload or 0.0,
                          load_timeout_s=args.model_load_timeout)


def models_in_dir(root: Path) -> list[Path]:
    """Model files and directories directly under `root`, sorted by name."""
    if not root.is_dir():
        raise ValueError(f"--models-dir {root} is not a directory")
    found = [p for p in sorted(root.iterdir())
             if (p.is_file() and p.suffix == ".gguf") or (p.is_dir() and (p / "config.json").is_file())]
    if not found:
        raise ValueError(f"--models-dir {root} holds no model (*.gguf or a directory with config.json)")
    return found


def model_configs(args: argparse.Namespace, options: dict[str, Any],
                  auto_backend: Callable[[Path], str]) -> tuple[ModelConfig, ...]:
    """One ModelConfig per --model and per model in --models-dir. Paths resolve (and catalog models are
    pulled) now, so a bad name fails at start, not at a first request."""
    if args.served_model_name:
        raise ValueError("--served-model-name names one model; with several, each is served under its own name")
    names = list(args.model or [])
    if args.models_dir:
        names += [str(p) for p in models_in_dir(Path(args.models_dir).expanduser())]
    if not names:
        names = [DEFAULT_MODEL]
    out: list[ModelConfig] = []
    for name in names:
        path = model_store.resolve(name)
        backend = auto_backend(path) if args.backend == "auto" else args.backend
        spec = ReplicaSpec(backend=backend, model=name, options=options)
        out.append(ModelConfig(name=model_store.served_name(name), replicas=(spec,) * args.replicas,
                               policy=args.policy, max_outstanding=args.max_outstanding))
    return tuple(out)
