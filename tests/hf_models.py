"""Tiny `transformers` models with random weights (nothing is downloaded), for tests."""

from __future__ import annotations

import torch
import transformers

LAYERS = 2


def gpt2(impl: str) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=LAYERS, n_head=4, n_embd=64, vocab_size=128, n_positions=64,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation=impl,
    )
    return transformers.GPT2LMHeadModel(cfg)


def llama_gqa(impl: str) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
        intermediate_size=128, vocab_size=128, attn_implementation=impl,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)
