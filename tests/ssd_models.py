"""Tiny Mamba-2 models and Mamba-2 hybrids from `transformers`, random weights, for the
SSD tests: one builder per family, each with only Mamba-2 mixers (and one attention
layer where the family needs one), head_dim 16, d_state 8, 2 groups, chunks of 8.

MIXERS gives (builder, Mamba-2 mixers in the model). A family this transformers lacks
is absent from it.
"""

from __future__ import annotations

import warnings

import torch
import transformers

COMMON = {"vocab_size": 128, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}


def mamba2(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.Mamba2Config(
        num_hidden_layers=2, hidden_size=32, expand=2, num_heads=4, head_dim=16,
        state_size=8, n_groups=2, chunk_size=8, use_cache=use_cache, **COMMON)
    return transformers.Mamba2ForCausalLM(cfg)


def bamba(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.BambaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, attn_layer_indices=[1], mamba_n_heads=4, mamba_d_head=16,
        mamba_n_groups=2, mamba_d_state=8, mamba_expand=2, mamba_chunk_size=8,
        use_cache=use_cache, **COMMON)
    return transformers.BambaForCausalLM(cfg)


def falcon_h1(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.FalconH1Config(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16,
        mamba_n_groups=2, mamba_d_state=8, mamba_expand=2, mamba_chunk_size=8,
        use_cache=use_cache, **COMMON)
    return transformers.FalconH1ForCausalLM(cfg)


def nemotron_h(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.NemotronHConfig(
        layers_block_type=["mamba", "mlp"], hidden_size=32, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, mamba_num_heads=4,
        mamba_head_dim=16, n_groups=2, ssm_state_size=8, expand=2, chunk_size=8,
        use_cache=use_cache, **COMMON)
    return transformers.NemotronHForCausalLM(cfg)


def granite_hybrid(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.GraniteMoeHybridConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, layer_types=["mamba", "attention"], num_local_experts=0,
        shared_intermediate_size=64, mamba_n_heads=4,
        mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_expand=2,
        mamba_chunk_size=8, use_cache=use_cache, **COMMON)
    return transformers.GraniteMoeHybridForCausalLM(cfg)


def zamba2(use_cache: bool = False) -> torch.nn.Module:
    cfg = transformers.Zamba2Config(
        num_hidden_layers=2, layers_block_type=["mamba", "mamba"], hidden_size=32,
        mamba_d_state=8, mamba_expand=2, mamba_ngroups=2, n_mamba_heads=4, chunk_size=8,
        num_attention_heads=4, num_key_value_heads=4, intermediate_size=64,
        use_mem_rope=False, use_cache=use_cache, **COMMON)
    return transformers.Zamba2ForCausalLM(cfg)


MIXERS = {"mamba2": (mamba2, 2), "bamba": (bamba, 1), "falcon_h1": (falcon_h1, 1),
          "nemotron_h": (nemotron_h, 1), "granite_hybrid": (granite_hybrid, 1),
          "zamba2": (zamba2, 2)}


def build(name: str, use_cache: bool = False) -> torch.nn.Module:
    """The tiny model `name` (a key of MIXERS), without transformers' config warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MIXERS[name][0](use_cache)
