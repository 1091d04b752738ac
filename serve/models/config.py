"""ModelArchConfig: the architecture facts the native model needs, from config.json or GGUF metadata.

Both sources are normalised to Hugging Face conventions (rotary layout, weight names), so the model
code has a single path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ARCHITECTURES = ("llama",)


@dataclass(frozen=True)
class RopeScaling:
    """HF `rope_scaling`: "linear" divides positions; "llama3" rescales low frequencies (Llama 3.1)."""

    kind: str = "default"  # "default" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"unsupported architecture {self.architecture!r}; the native engine runs: "
                             f"{', '.join(SUPPORTED_ARCHITECTURES)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `LlamaConfig`-compatible config.json body."""
        d: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps, "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu",
            "attention_bias": False, "mlp_bias": False,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids),
        }
        rs = self.rope_scaling
        if rs.kind == "linear":
            d["rope_scaling"] = {"rope_type": "linear", "factor": rs.factor}
        elif rs.kind == "llama3":
            d["rope_scaling"] = {"rope_type": "llama3", "factor": rs.factor, "low_freq_factor": rs.low_freq_factor,
                                 "high_freq_factor": rs.high_freq_factor,
                                 "original_max_position_embeddings": rs.original_max_position_embeddings}
        return d


def _eos_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list | tuple):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_scaling_from_hf(d: dict[str, Any] | None) -> RopeScaling:
    if not d:
        return RopeScaling()
    kind = d.get("rope_type", d.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ValueError(f"unsupported rope_scaling type {kind!r} (supported: linear, llama3)")
    return RopeScaling(kind=kind, factor=float(d.get("factor", 1.0)),
                       low_freq_factor=float(d.get("low_freq_factor", 1.0)),
                       high_freq_factor=float(d.get("high_freq_factor", 4.0)),
                       original_max_position_embeddings=int(d.get("original_max_position_embeddings", 8192)))


def from_hf_dict(d: dict[str, Any]) -> ModelArchConfig:
    """config.json (transformers LlamaConfig layout) -> ModelArchConfig."""
    model_type = d.get("model_type", "")
    if model_type != "llama":
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; the native engine runs: llama")
    heads = int(d["num_attention_heads"])
    hidden = int(d["hidden_size"])
    rope_params = d.get("rope_parameters") or {}  # transformers 5 moves rope_theta / scaling here
    scaling = d.get("rope_scaling") or (rope_params if rope_params.get("rope_type", "default") != "default" else None)
    return ModelArchConfig(
        architecture="llama", vocab_size=int(d["vocab_size"]), hidden_size=hidden,
        intermediate_size=int(d["intermediate_size"]), num_layers=int(d["num_hidden_layers"]),
        num_heads=heads, num_kv_heads=int(d.get("num_key_value_heads") or heads),
        head_dim=int(d.get("head_dim") or hidden // heads), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
        rope_theta=float(d.get("rope_theta", rope_params.get("rope_theta", 10000.0))),
        max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos_tuple(d.get("eos_token_id")),
        rope_scaling=_rope_scaling_from_hf(scaling),
    )
