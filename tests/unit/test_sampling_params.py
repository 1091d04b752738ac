"""SamplingParams: the one place request knobs are validated; every failure names its parameter."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from serve.sampling_params import ParamError, SamplingParams

BAD: list[tuple[str, Any]] = [
    ("n", 0), ("n", 129),
    ("max_tokens", 0), ("max_tokens", -5),
    ("temperature", -0.1), ("temperature", 2.01),
    ("top_p", 0.0), ("top_p", 1.01),
    ("top_k", -2),
    ("min_p", -0.01), ("min_p", 1.5),
    ("presence_penalty", -2.5), ("presence_penalty", 2.5),
    ("frequency_penalty", -2.5), ("frequency_penalty", 2.5),
    ("repetition_penalty", 0.0), ("repetition_penalty", 10.5),
    ("stop", tuple(f"s{i}" for i in range(17))), ("stop", ("ok", "")),
    ("logprobs", -1), ("logprobs", 21),
    ("logit_bias", {5: 100.5}), ("logit_bias", {5: -101.0}), ("logit_bias", {-1: 1.0}),
]

GOOD: list[tuple[str, Any]] = [
    ("n", 1), ("n", 128), ("max_tokens", 1), ("max_tokens", None),
    ("temperature", 0.0), ("temperature", 2.0), ("top_p", 1.0), ("top_p", 1e-6),
    ("top_k", -1), ("top_k", 0), ("top_k", 50), ("min_p", 0.0), ("min_p", 1.0),
    ("presence_penalty", -2.0), ("frequency_penalty", 2.0), ("repetition_penalty", 10.0),
    ("stop", tuple(f"s{i}" for i in range(16))), ("logprobs", 0), ("logprobs", 20),
    ("logit_bias", {0: -100.0, 49151: 100.0}),
]


@pytest.mark.parametrize(("field", "value"), BAD)
def test_invalid_value_raises_param_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ParamError) as info:
        SamplingParams(**{field: value})
    assert info.value.param == field
    assert isinstance(info.value, ValueError)  # callers that only know ValueError still catch it
    assert str(info.value)


@pytest.mark.parametrize(("field", "value"), GOOD)
def test_boundary_values_are_accepted(field: str, value: Any) -> None:
    p = SamplingParams(**{field: value})
    assert getattr(p, field) == value


def test_greedy_only_at_temperature_zero() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert not SamplingParams(temperature=0.01).greedy
    assert not SamplingParams().greedy


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({}, False),
    ({"presence_penalty": 0.5}, True),
    ({"frequency_penalty": -0.5}, True),
    ({"repetition_penalty": 1.1}, True),
    ({"repetition_penalty": 1.0, "presence_penalty": 0.0}, False),
])
def test_uses_penalties(kwargs: dict[str, Any], expected: bool) -> None:
    assert SamplingParams(**kwargs).uses_penalties is expected


def test_is_frozen() -> None:
    p = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 0.5  # type: ignore[misc]


def test_replace_revalidates() -> None:
    with pytest.raises(ParamError) as info:
        dataclasses.replace(SamplingParams(), max_tokens=0)
    assert info.value.param == "max_tokens"
