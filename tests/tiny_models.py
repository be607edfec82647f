"""Tiny models built offline at test time, for the real vLLM engine on CPU.

No hub access is possible on test machines, so the models are made here from nothing: a BPE
tokenizer trained with `tokenizers` on a small corpus (JSON punctuation, digits, the words our
prompts use), wrapped in PreTrainedTokenizerFast with a Qwen-style chat template, plus a config and
saved random weights (float32, < 1 MB). Saved weights (rather than load_format="dummy") let the
benchmark's bare `vllm.LLM` loop and the Ray path load exactly the same model.

`build_tiny_qwen2(dir)`     text-only Qwen2ForCausalLM (hidden 64, 2 layers, 1 head), ~4 s.
`build_tiny_qwen2_vl(dir)`  Qwen2VLForConditionalGeneration with a 1-block vision tower; needs the
                            torchvision shim (scripts/torchvision_shim.py) because transformers'
                            Qwen2-VL processor and vLLM's Qwen2-VL model import torchvision.

With random weights a model would wander inside a JSON string for hundreds of tokens before it
happens to pick a closing quote. `_steer_towards_short_strings` gives every token a constant
"preference" logit through one residual dimension, so tokens that close a string (or an array)
win often and structured output finishes within a few dozen tokens. Outputs stay a deterministic
function of the prompt, which is all the tests assert.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Words the prompts, object tables and answers use; the tokenizer learns them as whole tokens so
# prompts stay short (fewer tokens -> faster CPU prefill).
_WORDS = (
    "the a an of to in on at and or with without is are be not no all any each every this that "
    "which what where who how image object objects part parts id ids category box crowd attributes "
    "instruction answer target_ids subtype pairs task rules output json only write return list "
    "hallucination multi_object reasoning multi_granularity part same_category mixed_category "
    "function knowledge instance group relation attribute person dog cat car mug handle wheel "
    "table chair cup bottle umbrella left right top bottom behind front next holding sitting "
    "red blue green white black wooden metal plastic glass animal pet vehicle furniture food fruit "
    "system user assistant you are given write segment refer referring expression example examples"
)
_JSON_BITS = '{ } [ ] : , " {"pairs": [{"instruction": "", "answer": "", "target_ids": [], "subtype": ""}]}'

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen-style chat template. Content may be a string or a list of parts (OpenAI format); an image
# part of any spelling renders as Qwen's vision placeholder, text parts are joined by "\n" (Ray's
# chat stage does the same for vision models).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "<|im_start|>{{ message['role'] }}\n"
    "{%- if message['content'] is string -%}{{ '\n' + message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{ '\n' + part['text'] }}"
    "{%- elif part['type'] in ['image', 'image_url', 'image_pil'] -%}"
    "{{ '\n' }}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)


def _prompt_files_text() -> str:
    """The project's prompt files: trained on, they tokenize to ~1.8K tokens instead of ~3.5K."""
    root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "teachers", "prompts")
    if not os.path.isdir(root):
        return ""
    texts = []
    for name in sorted(os.listdir(root)):
        if name.endswith(".yaml"):
            with open(os.path.join(root, name), encoding="utf-8") as fh:
                texts.append(fh.read())
    return "\n".join(texts)


def _corpus(extra_text: str = "") -> list[str]:
    lines = [_WORDS, _JSON_BITS, " ".join(str(i) for i in range(0, 1001)), _prompt_files_text(), extra_text]
    lines += [
        json.dumps({"id": i, "category": w, "box": [i, i * 2, i * 3, i * 4]}) for i, w in enumerate(_WORDS.split()[:80])
    ]
    lines += ["".join(chr(c) for c in range(32, 127))]  # every printable ASCII char at least once
    return lines


def build_tokenizer(out_dir: str, vocab_size: int = 2000, extra_text: str = "") -> Any:
    """Train a byte-level BPE tokenizer offline and save it as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(extra_text), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def _steer_towards_short_strings(model: Any, tokenizer: Any, lm_head: Any, embed: Any, scale: float = 2.5) -> None:
    """Make closing tokens likely so random-weight JSON stays short (see module doc).

    All matrices (vision tower included) are first re-drawn at unit scale: with the default 0.02
    init every logit is ~0 and the output would depend neither on the prompt nor on the image.
    Residual dimension 0 is then a constant in every token embedding and no layer writes into it,
    so after the final norm it is a positive number; column 0 of the LM head turns it into a fixed
    per-token bias on top of the prompt-dependent logits. `scale` 2.5 was tuned by hand: at 1.0
    strings ran past 500 tokens, at 3.0 every prompt gave the same answer; at 2.5 a 3-pair answer
    takes ~200 tokens and differs between prompts.
    """
    import torch

    gen = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() != 2:
                continue
            std = 1.0 if p is embed.weight else p.shape[1] ** -0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    vocab = tokenizer.get_vocab()
    pref = torch.zeros(lm_head.weight.shape[0])
    for token, idx in vocab.items():
        text = tokenizer.convert_tokens_to_string([token])
        if text.startswith('"'):  # closes a string
            pref[idx] = 1.0
        elif text.startswith(("]", "}")):  # closes an array / object
            pref[idx] = 0.5
    pref[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 2.0
    with torch.no_grad():
        embed.weight[:, 0] = 1.0
        for name, p in model.named_parameters():
            # o_proj / down_proj write into the residual stream: keep dimension 0 constant.
            if "visual" not in name and name.endswith(("o_proj.weight", "down_proj.weight")):
                p[0, :] = 0.0
        lm_head.weight[:, 0] = pref * scale


def _text_kwargs(vocab_size: int, eos_id: int, pad_id: int) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        eos_token_id=eos_id,
        bos_token_id=pad_id,
        pad_token_id=pad_id,
    )


def build_tiny_qwen2(out_dir: str, seed: int = 0, extra_text: str = "") -> str:
    """A tiny Qwen2ForCausalLM with a trained tokenizer and saved random weights; returns the dir."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer(out_dir, extra_text=extra_text)
    vocab_size = _round_up(len(tok), 64)
    eos_id = tok.convert_tokens_to_ids("<|im_end|>")
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(**_text_kwargs(vocab_size, eos_id, pad_id), tie_word_embeddings=False)
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32)
    _steer_towards_short_strings(model, tok, model.lm_head, model.model.embed_tokens)
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(out_dir)
    return out_dir


def build_tiny_qwen2_vl(out_dir: str, seed: int = 0, extra_text: str = "") -> str:
    """A tiny Qwen2-VL (vision tower: 1 block, embed 32) with processor files; returns the dir.

    Needs the torchvision shim installed (scripts/torchvision_shim.py).
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer(out_dir, extra_text=extra_text)
    vocab_size = _round_up(len(tok), 64)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = _text_kwargs(vocab_size, ids["<|im_end|>"], ids["<|endoftext|>"])
    # mrope splits head_dim/2 = 32 rotary frequencies over (t, h, w).
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [8, 12, 12]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=1,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            in_channels=3,
        ),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    config.architectures = ["Qwen2VLForConditionalGeneration"]
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(torch.float32)
    _steer_towards_short_strings(model, tok, model.lm_head, model.get_input_embeddings())
    model.save_pretrained(out_dir, safe_serialization=True)
    GenerationConfig(eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]).save_pretrained(out_dir)
    # Small pixel budget: a test image becomes a handful of vision tokens.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    video_processor = Qwen2VLVideoProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out_dir)
    return out_dir


def _round_up(n: int, k: int) -> int:
    return (n + k - 1) // k * k


if __name__ == "__main__":  # manual use: python tests/tiny_models.py OUT_DIR [vl]
    import sys
    import time

    t0 = time.perf_counter()
    kind = sys.argv[2] if len(sys.argv) > 2 else "text"
    path = (build_tiny_qwen2_vl if kind == "vl" else build_tiny_qwen2)(sys.argv[1])
    print(f"built {kind} model in {path} in {time.perf_counter() - t0:.1f}s")
