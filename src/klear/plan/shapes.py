"""Model dimensions for sizing: read from a Hugging Face ``config.json`` or a built-in table.

Only what the memory formulas need: hidden size, layers, attention heads (query and
key/value), head size, MLP width, vocabulary, whether the LM head shares the embedding,
and the context length the model was configured for.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from klear.config import ConfigError


class PlanError(ConfigError):
    """A plan that cannot be made from its inputs (no model config, bad numbers); the message says why."""


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a decoder-only (Llama/Qwen-style, SwiGLU MLP, GQA) transformer."""

    name: str
    hidden: int
    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    max_position: int

    @property
    def q_dim(self) -> int:
        return self.q_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def layer_params(self) -> int:
        """One decoder layer: q/k/v/o projections, q/k head norms, SwiGLU MLP, two RMSNorms."""
        h = self.hidden
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h + 2 * self.head_dim
        mlp = 3 * h * self.intermediate
        return attn + mlp + 2 * h

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def params(self) -> int:
        """All parameters: embedding, layers, final norm and (when untied) the LM head."""
        head = 0 if self.tied else self.embed_params()
        return self.embed_params() + self.layers * self.layer_params() + self.hidden + head

    def to_dict(self) -> dict:
        return {**asdict(self), "params": self.params()}


#: built-in shapes for ``klear plan --arch NAME`` (values from the models' published config.json)
ARCHS: dict[str, ModelShape] = {
    "qwen3-8b": ModelShape(
        name="qwen3-8b",
        hidden=4096,
        layers=36,
        q_heads=32,
        kv_heads=8,
        head_dim=128,
        intermediate=12288,
        vocab=151936,
        tied=False,
        max_position=40960,
    ),
    "qwen3-1.7b": ModelShape(
        name="qwen3-1.7b",
        hidden=2048,
        layers=28,
        q_heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=6144,
        vocab=151936,
        tied=True,
        max_position=40960,
    ),
    "qwen3-0.6b": ModelShape(
        name="qwen3-0.6b",
        hidden=1024,
        layers=28,
        q_heads=16,
        kv_heads=8,
        head_dim=128,
        intermediate=3072,
        vocab=151936,
        tied=True,
        max_position=40960,
    ),
}


def _positive_int(cfg: dict, key: str, source: str) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanError(f"{source}: {key} = {value!r}: expected a positive integer")
    return value


def shape_from_hf_config(cfg: dict, source: str = "<config>") -> ModelShape:
    """A :class:`ModelShape` from the contents of an HF ``config.json`` (Qwen3/Qwen2/Llama style)."""
    hidden = _positive_int(cfg, "hidden_size", source)
    q_heads = _positive_int(cfg, "num_attention_heads", source)
    kv_heads = cfg.get("num_key_value_heads") or q_heads
    head_dim = cfg.get("head_dim") or hidden // q_heads
    shape = ModelShape(
        name=str(cfg.get("_name_or_path") or cfg.get("model_type") or Path(source).parent.name),
        hidden=hidden,
        layers=_positive_int(cfg, "num_hidden_layers", source),
        q_heads=q_heads,
        kv_heads=_positive_int({"num_key_value_heads": kv_heads}, "num_key_value_heads", source),
        head_dim=_positive_int({"head_dim": head_dim}, "head_dim", source),
        intermediate=_positive_int(cfg, "intermediate_size", source),
        vocab=_positive_int(cfg, "vocab_size", source),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        max_position=int(cfg.get("max_position_embeddings") or 0),
    )
    if q_heads % shape.kv_heads:
        raise PlanError(f"{source}: num_attention_heads = {q_heads} is not a multiple of num_key_value_heads")
    return shape


def load_shape(model_path: str | None, tiny: bool, arch: str | None) -> tuple[ModelShape, str]:
    """The model's shape and where it came from: ``--arch``, else ``model.path``/config.json, else tiny."""
    if arch is not None:
        if arch not in ARCHS:
            raise PlanError(f"--arch {arch!r}: unknown; built in: {', '.join(sorted(ARCHS))}")
        return ARCHS[arch], f"--arch {arch}"
    if model_path is None and tiny:
        from klear.models.tiny import TinyModelSpec, build_tokenizer

        spec, vocab = TinyModelSpec(), len(build_tokenizer())
        cfg = {
            "hidden_size": spec.hidden_size,
            "num_hidden_layers": spec.num_hidden_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "intermediate_size": spec.intermediate_size,
            "head_dim": spec.head_dim,
            "max_position_embeddings": spec.max_position_embeddings,
            "vocab_size": vocab,
            "tie_word_embeddings": True,
            "_name_or_path": "tiny",
        }
        return shape_from_hf_config(cfg, "model.tiny"), "model.tiny (built-in tiny Qwen3)"
    path = Path(str(model_path)) / "config.json"
    if not path.is_file():
        raise PlanError(
            f"model.path = {model_path!r}: no {path} to read the model's shape from; "
            f"point model.path at a downloaded HF directory, or pass --arch ({', '.join(sorted(ARCHS))})"
        )
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path}: not a JSON model config ({exc})") from None
    if not isinstance(cfg, dict):
        raise PlanError(f"{path}: top level must be a JSON object")
    return shape_from_hf_config(cfg, str(path)), str(path)
