"""[cluster] parsing: defaults, per-model overrides, and loud errors for what cannot work."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve.cluster.config import ClusterConfig, ClusterModel, parse_cluster
from serve.config_file import load_config
from tests.requirements import ray_missing, require

BASE = '[[models]]\nname = "smol"\n[[models.replicas]]\nbackend = "llamacpp"\n'


def test_without_cluster_the_server_stays_one_process(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(BASE)
    assert load_config(tmp_path / "a.toml").cluster is None


def test_cluster_table(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(BASE + '[cluster]\nengine = "ray"\naddress = "auto"\n'
                                     '[cluster.models.smol]\nmin_replicas = 1\nmax_replicas = 3\nthreads = 2\n')
    c = load_config(tmp_path / "c.toml").cluster
    assert c is not None and c.address == "auto"
    m = c.model("smol")
    assert m.autoscaling and (m.min_replicas, m.max_replicas, m.threads) == (1, 3, 2)
    assert c.model("other") == ClusterModel()  # unlisted models get the defaults


@pytest.mark.parametrize("table, words", [
    ({"engine": "k8s"}, "unknown cluster engine"),
    ({"adress": "auto"}, "unknown key"),
    ({"models": {"nope": {}}}, "not served"),
    ({"models": {"smol": {"min_replicas": 1}}}, "both min_replicas and max_replicas"),
    ({"models": {"smol": {"min_replicas": 3, "max_replicas": 2}}}, "min_replicas <= max_replicas"),
    ({"models": {"smol": {"replicas": 0}}}, "replicas must be >= 1"),
    ({"models": {"smol": {"gpus": 1}}}, "allows only"),
    ({"models": {"smol": {"stream_interval_ms": -1}}}, "stream_interval_ms must be >= 0"),
    ({"models": {"smol": {"prefix_max_imbalance": -2}}}, "prefix_max_imbalance"),
])
def test_bad_cluster_tables(table: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_cluster(table, {"smol"})


def test_defaults() -> None:
    assert ClusterConfig().engine == "ray" and ClusterConfig().address is None
    m = ClusterModel()
    assert m.stream_interval_ms > 0 and m.prefix_max_imbalance >= 1


def test_autoscaling_knobs_reach_serve() -> None:
    fast = parse_cluster({"models": {"smol": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                              "upscale_delay_s": 0.5, "downscale_delay_s": 0,
                                              "look_back_period_s": 2}}}, {"smol"}).model("smol")
    assert fast.autoscaling_config() == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1,
                                         "upscale_delay_s": 0.5, "downscale_delay_s": 0, "look_back_period_s": 2}
    plain = ClusterModel(min_replicas=1, max_replicas=2)  # unset knobs stay Serve's defaults
    assert plain.autoscaling_config() == {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2.0}
    require("ray", ray_missing())
    from serve.cluster.deploy import engine_options
    from serve.config import ModelConfig, ReplicaSpec

    mc = ModelConfig(name="smol", replicas=(ReplicaSpec(backend="llamacpp", model="m"),))
    assert engine_options(mc, fast, {})["autoscaling_config"] == fast.autoscaling_config()
    assert "autoscaling_config" not in engine_options(mc, ClusterModel(replicas=2), {})


@pytest.mark.parametrize("knobs, words", [
    ({"upscale_delay_s": -1}, "upscale_delay_s and downscale_delay_s must be >= 0"),
    ({"downscale_delay_s": -0.5}, "upscale_delay_s and downscale_delay_s must be >= 0"),
    ({"look_back_period_s": 0}, "look_back_period_s must be positive"),
])
def test_bad_autoscaling_knobs(knobs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        ClusterModel(min_replicas=1, max_replicas=2, **knobs)


def test_engine_options_pass_the_router_its_imbalance(tmp_path: Path) -> None:
    require("ray", ray_missing())
    from serve.cluster.deploy import engine_options

    (tmp_path / "c.toml").write_text(BASE.replace('name = "smol"', 'name = "smol"\npolicy = "prefix-affinity"')
                                     + '[cluster]\n[cluster.models.smol]\nprefix_max_imbalance = 3\n')
    config = load_config(tmp_path / "c.toml")
    opts = engine_options(config.models[0], config.cluster.model("smol"), {})
    rc = opts["request_router_config"]
    assert rc.request_router_class == "serve.cluster.routers.PrefixAffinityRouter"
    assert rc.request_router_kwargs == {"max_imbalance": 3}
