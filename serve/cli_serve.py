"""`sluice serve`: build the router from flags or a config file, then run the HTTP server."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import Any

from serve import model_store
from serve.cli_on_demand import add_on_demand_flags, model_configs, on_demand_config
from serve.config import BACKENDS, DEFAULT_MODEL, POLICIES, ModelConfig, ReplicaSpec, ServerConfig
from serve.limits import Limits
from serve.sampling_params import LOGPROBS_MODES
from serve.tenancy.keys import single_key


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API")
    p.add_argument("--model", action="append", default=None,
                   help=f"catalog name or local path (default: {DEFAULT_MODEL}); repeat to serve several, "
                        "each loaded at its first request")
    p.add_argument("--backend", default="auto", choices=("auto", *BACKENDS),
                   help="auto (default): native where it runs the model's architecture, else llamacpp")
    p.add_argument("--config", default=None, help="TOML or YAML file declaring models and replicas")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (visible in `ps`: prefer --api-key-file or $SLUICE_API_KEY)")
    p.add_argument("--api-key-file", default=None, metavar="PATH", help="read the API key from this file's first line")
    p.add_argument("--public-metrics", action="store_true", default=None, help="with keys set: /metrics without a key")
    p.add_argument("--public-docs", action="store_true", default=None, help="with keys set: /docs, /openapi.json without a key")
    p.add_argument("--audit-log", default=None, metavar="PATH", help="append one JSON line per request to PATH")
    p.add_argument("--audit-log-prompts", action="store_true", default=None,
                   help="also write prompt and output text into the audit log (off: never any text)")
    p.add_argument("--served-model-name", default=None, help="name clients use (default: catalog name / file stem)")
    p.add_argument("--replicas", type=int, default=1, help="replicas of the model on this backend")
    p.add_argument("--policy", default="least-outstanding", choices=POLICIES)
    p.add_argument("--max-outstanding", type=int, default=256, help="admitted requests before 503")
    p.add_argument("--url", default=None, help="remote backend: upstream base URL (…/v1)")
    p.add_argument("--upstream-api-key", default=None, help="remote backend: bearer token for the upstream")
    p.add_argument("--option", "-o", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable (e.g. n_parallel=8, dtype=bfloat16)")
    p.add_argument("--logprobs-mode", default=None, choices=LOGPROBS_MODES,
                   help="what returned logprobs describe (vLLM's flag): raw_logprobs (default), the model's own "
                        "distribution before bias, penalties, temperature and truncation; processed_logprobs, "
                        "the distribution the token was drawn from (native, llamacpp and vllm backends)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--no-ui", dest="ui", action="store_false", default=None, help="do not serve the web UI at /")
    add_on_demand_flags(p)
    _add_limit_flags(p)
    p.set_defaults(func=run)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """One flag per Limits field (--limit-max-tokens, --limit-request-timeout-s, ...), so that the
    dataclass stays the one list of limits."""
    g = p.add_argument_group("per-request limits (also [limits] in --config)")
    for f in dataclasses.fields(Limits):
        g.add_argument(f"--limit-{f.name.replace('_', '-')}", dest=f"limit_{f.name}", default=None,
                       type=float if f.name.endswith("_s") else int, help=f"default {f.default}")


def _limit_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f"limit_{f.name}", None) for f in dataclasses.fields(Limits)
            if getattr(args, f"limit_{f.name}", None) is not None}


def _backend_options(args: argparse.Namespace, backend: str | None = None) -> dict[str, Any]:
    """The replicas' options: `--option` pairs, plus the flags that are backend options."""
    options = _parse_options(args.option)
    mode = getattr(args, "logprobs_mode", None)
    if mode is not None:
        if backend == "remote":
            raise ValueError("--logprobs-mode is the upstream server's setting, not the remote backend's")
        options["logprobs_mode"] = mode
    return options


def _parse_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--option expects KEY=VALUE, got {item!r}")
        out[key] = _coerce(value)
    return out


def _coerce(value: str) -> Any:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def auto_backend(path: Path) -> str:
    """native for architectures our engine runs (it measured fastest on every CPU type we benchmarked,
    benchmarks/results/), llamacpp for the rest of what a GGUF file can hold (e.g. gemma3)."""
    from serve.models.loader import load_model_config
    from serve.models.registry import MODELS

    try:
        arch = load_model_config(path).architecture
    except (ValueError, OSError, KeyError):
        return "llamacpp"
    return "native" if arch in MODELS else "llamacpp"


def build_config(args: argparse.Namespace) -> ServerConfig:
    key = single_key(args.api_key, args.api_key_file, os.environ.get("SLUICE_API_KEY"))
    overrides = {"host": args.host, "port": args.port, "api_key": key, "log_level": args.log_level,
                 "public_metrics": args.public_metrics, "public_docs": args.public_docs,
                 "audit_log": args.audit_log, "audit_log_prompts": args.audit_log_prompts, "ui": args.ui,
                 "on_demand": on_demand_config(args)}
    if args.config:
        from serve.config_file import load_config

        if getattr(args, "logprobs_mode", None) is not None:
            raise ValueError("with --config, set logprobs_mode in the replicas' options")
        return load_config(args.config, {**overrides, "limits": _limit_flags(args)})
    if overrides["on_demand"] is not None:
        models = model_configs(args, _backend_options(args, args.backend), auto_backend)
        return ServerConfig(models=models, limits=Limits(**_limit_flags(args)),
                            **{k: v for k, v in overrides.items() if v is not None})
    model = args.model[0] if args.model else DEFAULT_MODEL
    backend = args.backend
    if backend != "remote":
        path = model_store.resolve(model)  # pull now, so a bad name or path fails here in one line
        if backend == "auto":
            backend = auto_backend(path)
    spec = ReplicaSpec(backend=backend, model=model, url=args.url, api_key=args.upstream_api_key,
                       options=_backend_options(args, backend))
    name = args.served_model_name or model_store.served_name(model)
    mc = ModelConfig(name=name, replicas=(spec,) * args.replicas, policy=args.policy,
                     max_outstanding=args.max_outstanding)
    return ServerConfig(models=(mc,), limits=Limits(**_limit_flags(args)),
                        **{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = build_config(args)
        if config.cluster is not None:  # engines on Ray Serve; this process only deploys and waits
            from serve.cluster.deploy import run_cluster

            return run_cluster(config)
        from serve.server import build_app

        app = build_app(config)
    except (ValueError, model_store.ModelNotFound) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    import uvicorn

    uvicorn.run(app, host=config.host, port=config.port, log_level=config.log_level,
                timeout_graceful_shutdown=5, access_log=False)
    return 0
