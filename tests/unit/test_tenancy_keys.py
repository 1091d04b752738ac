"""API keys: hashing, lookup, cache salts, `[[keys]]` parsing, the single-key sources, `sluice keys`,
and the key the managed vLLM child gets (in its environment, never its argv)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from serve.backends.child_process import child_env
from serve.backends.vllm import vllm_argv, vllm_env
from serve.cli import main
from serve.config_file import load_config
from serve.tenancy.keys import KeyRing, KeySpec, all_keys, hash_key, single_key

H_A, H_B = hash_key("key-a"), hash_key("key-b")


def test_hash_is_sha256_of_the_key() -> None:
    assert hash_key("abc") == "sha256:" + hashlib.sha256(b"abc").hexdigest()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"id": ""}, "non-empty"),
    ({"id": "a"}, "exactly one"),
    ({"id": "a", "hash": H_A, "env": "X"}, "exactly one"),
    ({"id": "a", "hash": "md5:abc"}, "sha256"),
    ({"id": "a", "hash": H_A.upper()}, "sha256"),
    ({"id": "a", "hash": H_A, "requests_per_minute": 0}, "requests_per_minute"),
    ({"id": "a", "hash": H_A, "max_concurrent": 1.5}, "max_concurrent"),
])
def test_bad_key_specs_fail_loudly(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KeySpec(**kwargs)


def test_lookup_finds_the_right_tenant_and_salts_only_with_two_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B_KEY", "key-b")
    ring = KeyRing((KeySpec("a", hash=H_A), KeySpec("b", env="B_KEY")))
    a, b = ring.lookup("key-a"), ring.lookup("key-b")
    assert a is not None and b is not None and (a.id, b.id) == ("a", "b")
    assert ring.lookup("key-c") is None and ring.lookup("") is None and ring.lookup("key-a ") is None
    assert a.cache_salt and b.cache_salt and a.cache_salt != b.cache_salt
    assert "a" not in (a.cache_salt, H_A) and len(a.cache_salt) == 64  # unguessable from the id
    assert KeyRing((KeySpec("a", hash=H_A),)).tenants[0].cache_salt is None  # one tenant: nothing to isolate


def test_env_key_must_be_set_and_secrets_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOT_SET_KEY", raising=False)
    with pytest.raises(ValueError, match=r"\$NOT_SET_KEY"):
        KeyRing((KeySpec("a", env="NOT_SET_KEY"),))
    with pytest.raises(ValueError, match="same secret"):
        KeyRing((KeySpec("a", hash=H_A), KeySpec("b", hash=H_A)))


def test_single_key_sources_and_the_default_tenant(tmp_path: Path) -> None:
    f = tmp_path / "key"
    f.write_text("from-file\nignored\n")
    assert single_key("flag", str(f), "env") == "flag"
    assert single_key(None, str(f), "env") == "from-file"
    assert single_key(None, None, "env") == "env"
    assert single_key(None, None, None) is None
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        single_key(None, str(tmp_path / "empty"), None)
    with pytest.raises(ValueError, match="cannot read"):
        single_key(None, str(tmp_path / "absent"), None)
    keys = all_keys((KeySpec("a", hash=H_A),), "plain")
    assert [k.id for k in keys] == ["a", "default"] and keys[1].hash == hash_key("plain")
    with pytest.raises(ValueError, match="reserved"):
        all_keys((KeySpec("default", hash=H_A),), "plain")


CONFIG = f"""
[server]
public_metrics = true
audit_log = "/tmp/audit.jsonl"
[[models]]
name = "smol"
aliases = ["default"]
[[models.replicas]]
backend = "remote"
model = "up"
url = "http://127.0.0.1:1/v1"
[[keys]]
id = "a"
hash = "{H_A}"
models = ["default"]
requests_per_minute = 60
tokens_per_minute = 1000
max_concurrent = 2
[[keys]]
id = "b"
env = "B_KEY"
"""


def test_config_file_keys(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(CONFIG)
    cfg = load_config(p)
    a, b = cfg.keys
    assert (a.id, a.hash, a.models, a.requests_per_minute, a.tokens_per_minute, a.max_concurrent) == \
        ("a", H_A, ("default",), 60, 1000, 2)
    assert (b.id, b.env, b.models) == ("b", "B_KEY", None)
    assert cfg.public_metrics and not cfg.public_docs and cfg.audit_log == "/tmp/audit.jsonl"


@pytest.mark.parametrize(("edit", "message"), [
    (('models = ["default"]', 'models = ["nope"]'), "not served: nope"),
    (('models = ["default"]', 'models = "default"'), "list of model names"),
    (("max_concurrent = 2", "burst = 2"), "unknown key"),
    (('id = "b"', 'id = "a"'), "share an id"),
])
def test_config_file_key_errors(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    p = tmp_path / "c.toml"
    p.write_text(CONFIG.replace(*edit))
    with pytest.raises(ValueError, match=message):
        load_config(p)


def test_cli_keys_hash_reads_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("key-a\n"))
    assert main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == H_A
    assert main(["keys", "new"]) == 0
    key, digest = capsys.readouterr().out.split()
    assert hash_key(key) == digest and len(key) > 40


def test_vllm_child_key_travels_in_env_not_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = vllm_argv("python", Path("/m"), "smol", 8123, {})
    env = vllm_env({}, "child-secret")
    assert env["VLLM_API_KEY"] == "child-secret"
    assert not any("child-secret" in a for a in argv) and "--api-key" not in argv
    monkeypatch.setenv("SLUICE_API_KEY", "our-clients-key")
    full = child_env(env)
    assert full["VLLM_API_KEY"] == "child-secret" and "SLUICE_API_KEY" not in full
