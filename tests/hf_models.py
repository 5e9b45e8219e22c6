"""Tiny `transformers` models with random weights (nothing is downloaded), for tests."""

from __future__ import annotations

import warnings

import torch
import transformers

import ioaware
from ioaware.verify import relative_error

LAYERS = 2


def gpt2(impl: str, dropout: float = 0.0) -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        n_layer=LAYERS, n_head=4, n_embd=64, vocab_size=128, n_positions=64,
        attn_pdrop=dropout, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        attn_implementation=impl,
    )
    return transformers.GPT2LMHeadModel(cfg)


def llama_gqa(impl: str, dropout: float = 0.0) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
        intermediate_size=128, vocab_size=128, attn_implementation=impl,
        attention_dropout=dropout,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(cfg)


def mistral_sliding(impl: str, dropout: float = 0.0) -> torch.nn.Module:
    """Mistral with GQA and a sliding window (8) shorter than the test sequences."""
    cfg = transformers.MistralConfig(
        num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2, hidden_size=64,
        intermediate_size=128, vocab_size=128, sliding_window=8, attn_implementation=impl,
        attention_dropout=dropout,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return transformers.MistralForCausalLM(cfg)


def left_padded_mask(batch: int, n: int, pads: tuple[int, ...] = (5, 0)) -> torch.Tensor:
    """attention_mask [batch, n] of 0/1 with pads[i] padding tokens on the left of row i."""
    mask = torch.ones(batch, n, dtype=torch.long)
    for i, p in enumerate(pads[:batch]):
        mask[i, :p] = 0
    return mask


def quietly(build, impl: str, **kwargs) -> torch.nn.Module:
    """Build a model without transformers' config warnings (tiny vocabularies etc.)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(impl, **kwargs)


def _main_output(out) -> torch.Tensor:
    """The logits of an LM head, else the encoder's last hidden state."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def assert_compiled_matches_eager(model: torch.nn.Module, ids: torch.Tensor, tol: float,
                                  **kwargs) -> None:
    """ioaware.compile(model): logits (or the last hidden state) and every parameter
    gradient within `tol` of eager.

    The loss is mean(logits²) in fp32; gradients use an RMS floor of 1e-3 (see
    ioaware.verify.relative_error) for parameters whose gradient is all but zero.
    kwargs (attention_mask, ...) go to both calls.
    """
    logits = _main_output(ioaware.compile(model)(ids, **kwargs))
    logits.float().square().mean().backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    ref = _main_output(model(ids, **kwargs))
    ref.float().square().mean().backward()
    want = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    assert relative_error(logits, ref) <= tol
    assert got.keys() == want.keys() and len(got) > 0
    for name, w in want.items():
        assert relative_error(got[name], w, floor=1e-3) <= tol, name


def _config_with_scan(cls, associative_scan: bool, **fields):
    """A config with `use_associative_scan` set, or None where this transformers has no
    such field (5.17) and the associative path cannot be asked for."""
    cfg = cls(**fields)
    if associative_scan and not hasattr(cfg, "use_associative_scan"):
        return None
    if hasattr(cfg, "use_associative_scan"):
        cfg.use_associative_scan = associative_scan
    return cfg


def mamba(associative_scan: bool) -> torch.nn.Module | None:
    """Tiny MambaForCausalLM (LAYERS mixers, each one selective scan); None when
    `associative_scan` is asked for and this transformers cannot do it."""
    cfg = _config_with_scan(
        transformers.MambaConfig, associative_scan, num_hidden_layers=LAYERS, hidden_size=32,
        state_size=8, intermediate_size=48, time_step_rank=4, vocab_size=128, use_cache=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return None if cfg is None else transformers.MambaForCausalLM(cfg)


def jamba(associative_scan: bool) -> torch.nn.Module | None:
    """Tiny JambaForCausalLM: LAYERS Mamba mixers (the attention layer period is longer
    than the model, so the scans are tested alone), dense MLPs (one expert)."""
    cfg = _config_with_scan(
        transformers.JambaConfig, associative_scan, num_hidden_layers=LAYERS, hidden_size=32,
        intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, mamba_d_state=8,
        mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4, attn_layer_period=LAYERS + 1,
        attn_layer_offset=LAYERS, num_experts=1, expert_layer_period=2, expert_layer_offset=1,
        vocab_size=128, use_cache=False, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return None if cfg is None else transformers.JambaForCausalLM(cfg)
