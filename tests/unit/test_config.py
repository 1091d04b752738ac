"""Server configuration: TOML/YAML files, dataclass validation, and `sluice serve` flags."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from serve import model_store
from serve.cli_serve import _parse_options, add_parser, build_config
from serve.config import BreakerConfig, ModelConfig, ReplicaSpec, ServerConfig
from serve.config_file import load_config
from tests.requirements import model_missing, require

TOML = """
[server]
port = 9001
api_key = "k"

[[models]]
name = "smol"
aliases = ["default", "chat"]
policy = "prefix-affinity"
max_outstanding = 32

[[models.replicas]]
backend = "llamacpp"
model = "smollm2-135m-instruct"
options = { n_parallel = 4, n_ctx = 2048 }

[[models.replicas]]
backend = "remote"
model = "upstream-name"
url = "http://127.0.0.1:9000/v1"

[[models]]
name = "other"
[[models.replicas]]
backend = "native"
"""

YAML = """
server:
  port: 9001
  api_key: k
models:
  - name: smol
    aliases: [default, chat]
    policy: prefix-affinity
    max_outstanding: 32
    replicas:
      - backend: llamacpp
        model: smollm2-135m-instruct
        options: {n_parallel: 4, n_ctx: 2048}
      - backend: remote
        model: upstream-name
        url: http://127.0.0.1:9000/v1
  - name: other
    replicas:
      - backend: native
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_toml_file_is_loaded(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "c.toml", TOML))
    assert (cfg.port, cfg.api_key, cfg.host) == (9001, "k", "127.0.0.1")
    smol, other = cfg.models
    assert (smol.name, smol.aliases, smol.policy, smol.max_outstanding) == ("smol", ("default", "chat"),
                                                                            "prefix-affinity", 32)
    assert smol.replicas[0] == ReplicaSpec(backend="llamacpp", model="smollm2-135m-instruct",
                                           options={"n_parallel": 4, "n_ctx": 2048})
    assert smol.replicas[1].url == "http://127.0.0.1:9000/v1" and smol.replicas[1].model == "upstream-name"
    assert other.policy == "least-outstanding" and other.max_outstanding == 256
    assert other.replicas == (ReplicaSpec(backend="native"),)


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_equals_toml_file(tmp_path: Path, suffix: str) -> None:
    assert load_config(write(tmp_path, "c" + suffix, YAML)) == load_config(write(tmp_path, "c.toml", TOML))


def test_overrides_win_over_the_file_and_none_is_ignored(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "c.toml", TOML), {"port": 7000, "host": None, "log_level": "debug"})
    assert (cfg.port, cfg.host, cfg.log_level) == (7000, "127.0.0.1", "debug")


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "c.toml", TOML))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.port = 1  # type: ignore[misc]


MODEL = '[[models]]\nname = "m"\n[[models.replicas]]\nbackend = "llamacpp"\n'


@pytest.mark.parametrize(("text", "message"), [
    ('colour = "red"\n' + MODEL, r"unknown key\(s\) in the config: colour"),
    ('[server]\nprot = 1\n' + MODEL, r"unknown key\(s\) in \[server\]: prot"),
    (MODEL.replace('name = "m"', 'name = "m"\nweight = 2'), r"unknown key\(s\) in models\[0\]: weight"),
    (MODEL + "gpu = true\n", r"unknown key\(s\) in models\[0\].replicas\[0\]: gpu"),
    (MODEL.replace("llamacpp", "tensorrt"), "unknown backend 'tensorrt'.*llamacpp, native, vllm, remote"),
    (MODEL.replace("llamacpp", "remote"), "remote replica needs `url`"),
    (MODEL.replace('name = "m"', 'name = "m"\npolicy = "random"'), "unknown policy 'random'"),
    (MODEL.replace('name = "m"', 'name = "m"\nmax_outstanding = 0'), "max_outstanding must be >= 1"),
    (MODEL + MODEL.replace('name = "m"', 'name = "n"\naliases = ["m"]'), "'m' is declared twice"),
    (MODEL.replace('name = "m"', 'name = "m"\naliases = ["a", "a"]'), "'a' is declared twice"),
    ('[[models]]\nname = "m"\n', "model 'm' has no replicas"),
    ("[server]\nport = 1\n", "declares no models"),
    ('[server]\nport = 70000\n' + MODEL, "port 70000 is out of range"),
    ("[[models]\n", "not valid TOML"),
])
def test_bad_toml_gives_a_clear_value_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(write(tmp_path, "c.toml", text))


@pytest.mark.parametrize(("text", "message"), [
    ("models: [unclosed\n", "not valid YAML"),
    ("- a\n- b\n", "mapping at the top level"),
    ("models:\n  - 5\n", r"models\[0\] must be a mapping"),
    ("models:\n  - name: m\n    replicas: [7]\n", r"models\[0\].replicas\[0\] must be a mapping"),
    ("server: [1]\nmodels:\n  - name: m\n    replicas: [{backend: native}]\n", r"\[server\] must be a mapping"),
    ("models:\n  - name: m\n    replicas: [{backend: native, options: [1, 2]}]\n", "options must be a mapping"),
    ("server: {port: abc}\nmodels:\n  - name: m\n    replicas: [{backend: native}]\n", "wrong type"),
])
def test_malformed_yaml_gives_a_value_error_not_a_crash(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(write(tmp_path, "c.yaml", text))


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_dataclasses_validate_directly() -> None:
    with pytest.raises(ValueError, match="non-empty `name`"):
        ModelConfig(name="", replicas=(ReplicaSpec(),))
    with pytest.raises(ValueError, match="declared twice"):
        m = ModelConfig(name="m", replicas=(ReplicaSpec(),))
        ServerConfig(models=(m, m))


# --- `sluice serve` flags ---

@pytest.mark.parametrize(("items", "expected"), [
    ([], {}),
    (["n_parallel=8"], {"n_parallel": 8}),
    (["dtype=bfloat16", "scale=1.5", "flash=TRUE", "mmap=false"],
     {"dtype": "bfloat16", "scale": 1.5, "flash": True, "mmap": False}),
    (["expr=a=b"], {"expr": "a=b"}),
    (["empty="], {"empty": ""}),
    (["k=1", "k=2"], {"k": 2}),
])
def test_parse_options_coerces_values(items: list[str], expected: dict[str, object]) -> None:
    assert _parse_options(items) == expected


@pytest.mark.parametrize("item", ["novalue", "=3"])
def test_parse_options_rejects_malformed(item: str) -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        _parse_options([item])


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    p = tmp_path / "tiny-model.Q4_0.gguf"
    p.write_bytes(b"GGUF")  # only its path matters here: build_config does not load the model
    return p


def test_defaults_serve_the_bundled_model() -> None:
    if not model_store.is_pulled("smollm2-135m-instruct"):
        require("model", model_missing())
    cfg = build_config(serve_args())
    assert (cfg.host, cfg.port, cfg.api_key) == ("127.0.0.1", 8000, None)
    (m,) = cfg.models
    assert m.name == "smollm2-135m-instruct" and m.policy == "least-outstanding" and m.max_outstanding == 256
    # backend "auto": the bundled model is a Llama, which the native engine runs
    assert m.replicas == (ReplicaSpec(backend="native", model="smollm2-135m-instruct"),)


def test_auto_backend_falls_back_to_llamacpp_for_what_native_cannot_load(gguf: Path) -> None:
    from serve.cli_serve import auto_backend

    assert auto_backend(gguf) == "llamacpp"  # not a model native can read (gemma3 goes the same way)
    cfg = build_config(serve_args("--model", str(gguf), "--backend", "llamacpp"))
    assert cfg.models[0].replicas[0].backend == "llamacpp"


def test_local_gguf_is_served_under_its_stem_with_flags(gguf: Path) -> None:
    cfg = build_config(serve_args("--model", str(gguf), "--replicas", "3", "--policy", "prefix-affinity",
                                  "--max-outstanding", "5", "-o", "n_parallel=2", "--port", "0",
                                  "--host", "0.0.0.0", "--api-key", "s3cret"))
    (m,) = cfg.models
    assert m.name == "tiny-model.Q4_0" and len(m.replicas) == 3
    assert all(r == ReplicaSpec(model=str(gguf), options={"n_parallel": 2}) for r in m.replicas)
    assert (m.policy, m.max_outstanding, cfg.port, cfg.host, cfg.api_key) == ("prefix-affinity", 5, 0, "0.0.0.0",
                                                                             "s3cret")


def test_logprobs_mode_flag_is_a_backend_option(gguf: Path, tmp_path: Path) -> None:
    from serve.backends.llamacpp import LlamaCppBackend

    cfg = build_config(serve_args("--model", str(gguf), "--backend", "llamacpp", "--logprobs-mode", "processed_logprobs"))
    (r,) = cfg.models[0].replicas
    assert r.options == {"logprobs_mode": "processed_logprobs"}
    LlamaCppBackend(r)  # a known option
    from serve.backends.vllm import vllm_argv

    argv = vllm_argv("py", gguf, "m", 1, {"logprobs_mode": "processed_logprobs"})  # vLLM's own flag
    assert argv[argv.index("--logprobs-mode") + 1] == "processed_logprobs"
    with pytest.raises(ValueError, match="logprobs_mode"):
        LlamaCppBackend(ReplicaSpec(options={"logprobs_mode": "raw_logits"}))
    with pytest.raises(SystemExit):  # argparse: not one of the modes
        serve_args("--logprobs-mode", "raw_logits")
    with pytest.raises(ValueError, match="upstream"):
        build_config(serve_args("--backend", "remote", "--model", "m", "--url", "http://127.0.0.1:9/v1",
                                "--logprobs-mode", "raw_logprobs"))
    with pytest.raises(ValueError, match="replicas' options"):
        build_config(serve_args("--config", str(write(tmp_path, "c.toml", TOML)), "--logprobs-mode", "raw_logprobs"))


def test_served_model_name_flag(gguf: Path) -> None:
    cfg = build_config(serve_args("--model", str(gguf), "--served-model-name", "mine"))
    assert cfg.models[0].name == "mine"


def test_missing_model_path_is_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(model_store.ModelNotFound, match="neither a catalog name"):
        build_config(serve_args("--model", str(tmp_path / "absent.gguf")))


def test_remote_needs_url_and_skips_model_resolution() -> None:
    with pytest.raises(ValueError, match="needs `url`"):
        build_config(serve_args("--backend", "remote", "--model", "gpt-upstream"))
    cfg = build_config(serve_args("--backend", "remote", "--model", "gpt-upstream", "--url",
                                  "http://127.0.0.1:9/v1", "--upstream-api-key", "up"))
    (r,) = cfg.models[0].replicas
    assert (r.backend, r.model, r.url, r.api_key) == ("remote", "gpt-upstream", "http://127.0.0.1:9/v1", "up")
    assert cfg.models[0].name == "gpt-upstream"


def test_config_flag_loads_the_file_and_cli_overrides_win(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", TOML)
    cfg = build_config(serve_args("--config", str(path), "--port", "8123", "--model", "ignored"))
    assert cfg.port == 8123 and cfg.api_key == "k" and [m.name for m in cfg.models] == ["smol", "other"]


def test_breaker_table_is_read_and_checked(tmp_path: Path) -> None:
    text = MODEL.replace('name = "m"', 'name = "m"\nbreaker = { failures = 5, cooldown_s = 2.5 }')
    m = load_config(write(tmp_path, "c.toml", text)).models[0]
    assert (m.breaker.failures, m.breaker.cooldown_s) == (5, 2.5)
    assert load_config(write(tmp_path, "d.toml", MODEL)).models[0].breaker == BreakerConfig()
    with pytest.raises(ValueError, match=r"unknown key\(s\) in models\[0\].breaker: trips"):
        load_config(write(tmp_path, "e.toml", MODEL.replace('name = "m"', 'name = "m"\nbreaker = { trips = 1 }')))
    with pytest.raises(ValueError, match="breaker failures must be >= 1"):
        load_config(write(tmp_path, "f.toml", MODEL.replace('name = "m"', 'name = "m"\nbreaker = { failures = 0 }')))
