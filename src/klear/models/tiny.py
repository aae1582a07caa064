"""The tiny model of the demo: a Qwen3-architecture causal LM with random weights and a local tokenizer.

Nothing is downloaded. The tokenizer is character level (printable ASCII and newline)
plus the chat markers a Qwen chat model uses, each as one token: ``<|im_start|>``,
``<|im_end|>`` (end of turn = EOS), ``<think>``, ``</think>``, and ``<|endoftext|>``
(padding). Its chat template renders messages the way Qwen's does
(``<|im_start|>ROLE\\nCONTENT<|im_end|>\\n``), so the SFT and RL code paths that
serve Qwen3-8B-Base serve the tiny model unchanged.

``build_tiny_model(dir, seed)`` writes a plain Hugging Face directory (config.json,
model.safetensors, generation_config.json, tokenizer files) that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Special tokens (never split, removed by ``decode(skip_special_tokens=True)``).
PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK_TOKEN = "<unk>"
#: Reasoning markers: single tokens but *not* special, so decoded text keeps them and the
#: math reward can find ``</think>`` (as with Qwen3's own tokenizer).
THINK_TOKENS = ("<think>", "</think>")

CHARS: tuple[str, ...] = (*(chr(i) for i in range(32, 127)), "\n")

#: Qwen-style chat template (no tool calls, no automatic think block).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model. The defaults give ~0.5M parameters: the prototype's size,
    which learns 3-5 digit addition with written carries in about a minute of CPU SFT."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    max_position_embeddings: int = 512


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """The character-level tokenizer with Qwen chat markers, built in memory."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, IM_START, IM_END]
    vocab = {tok: i for i, tok in enumerate([*specials, *THINK_TOKENS, UNK_TOKEN, *CHARS])}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # every character is its own word; Fuse joins the pieces back without separators
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in [*specials, UNK_TOKEN]])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=TinyModelSpec.max_position_embeddings,
    )


def tiny_config(vocab_size: int, eos_token_id: int, pad_token_id: int, spec: TinyModelSpec | None = None):
    """A ``Qwen3Config`` for the tiny model (tied embeddings: the vocabulary is ~100 tokens)."""
    from transformers import Qwen3Config

    spec = spec or TinyModelSpec()
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
    )


def build_tiny_model(out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None) -> Path:
    """Write a randomly initialised tiny Qwen3 and its tokenizer to ``out_dir``; return the path.

    The weights depend only on ``seed`` (and ``spec``), so two builds with the same seed
    are identical -- the demo and the tests rely on that.
    """
    import torch
    from transformers import Qwen3ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = tiny_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, spec)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(seed)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
