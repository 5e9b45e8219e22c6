"""Exact attention as torch ops with their own autograd (registered as codegen/library.py
says: each differentiable op over a kernel op `..._forward` with the same schema, which
is what Inductor's compiled forward calls; the backward ops are kernel ops).

    ioaware::flash_attention(q, k, v, scale, causal) -> (out, lse)
    ioaware::flash_attention_backward(dout, q, k, v, out, lse, scale, causal, dlse=None)
        -> (dq, dk, dv)
    ioaware::attention(q, k, v, inputs, spec, seed=None) -> (out, lse)
        the general AttentionSpec (masks, score mods, extra inputs, dropout); see the
        block comment above `attention_op` and docs/kernels.md

q [B, Hq, Nq, d], k [B, Hkv, Nk, d], v [B, Hkv, Nk, dv], any strides, Hq % Hkv == 0;
out [B, Hq, Nq, dv] contiguous in q.dtype; lse [B, Hq, Nq] fp32, natural log.

Dispatch, decided per call from the tensors' device (`backend_name`):
    CUDA tensor                     -> compiled Triton kernels ("triton")
    CPU tensor, config.interpret    -> the same kernels under Triton's interpreter
                                       ("triton-interpret")
    anything else                   -> reference.py, plain torch in fp32 ("reference")
Empty problems (B, H, Nq or Nk = 0) never launch a kernel; they return what eager math
gives (Nk = 0: P V over an empty axis, out = 0, lse = -inf).

The ops are opaque to Inductor (fake implementations give shapes), so they survive
torch.compile, and run as ordinary callables in fx graphs executed eagerly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ioaware.codegen.attention.spec import AttentionSpec
from ioaware.spec import DTYPES, INPUT_DTYPES, dtype_name

from ..library import differentiable_op, kernel_op
from ..plan import planned
from ..runtime import backend_name, device_context, kernel_module
from . import reference
from .header import is_plain

__all__ = ["attention", "backend_name", "dropout_keep_mask", "flash_attention"]

# CUDA caps a grid's second axis at 65535 programs; the kernels put batch·heads there,
# so larger batches are launched in slices of the batch (views: no copies).
MAX_GRID_Y = 65535


def _batch_slices(batch: int, heads: int) -> list[slice]:
    step = max(1, MAX_GRID_Y // max(heads, 1))
    return [slice(b, min(b + step, batch)) for b in range(0, batch, step)]


def _fits_one_grid(q: Tensor) -> bool:
    """One launch covers the batch (the usual case): no per-slice views to make."""
    return q.shape[0] * q.shape[1] <= MAX_GRID_Y


def _check_inputs(q: Tensor, k: Tensor, v: Tensor, scale: float,
                  spec: AttentionSpec | None = None) -> None:
    """Raise ValueError naming the offending argument; see the module docstring. With an
    FP8 `spec`, each operand's dtype is the one the Spec reads it in."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, H, N, d]; got {name}.shape={tuple(t.shape)}")
    if spec is not None and spec.fp8:
        for name, t in (("q", q), ("k", k), ("v", v)):
            if t.dtype != spec.operand_dtype(name):
                raise ValueError(f"{name}.dtype={t.dtype}; spec.fp8={spec.fp8!r} with "
                                 f"dtype={spec.dtype!r} reads it as "
                                 f"{spec.operand_dtype(name)}")
    elif q.dtype not in DTYPES.values():
        raise ValueError(f"q.dtype={q.dtype} is not supported; expected one of {sorted(DTYPES)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype and not (spec is not None and spec.fp8):
            raise ValueError(f"{name}.dtype={t.dtype} must equal q.dtype={q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}.device={t.device} must equal q.device={q.device}")
    if not (k.shape[0] == v.shape[0] == q.shape[0]):
        raise ValueError(
            f"batch sizes differ: q.shape[0]={q.shape[0]}, k.shape[0]={k.shape[0]}, "
            f"v.shape[0]={v.shape[0]}"
        )
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(
            f"k and v must agree on heads and length: k.shape={tuple(k.shape)}, "
            f"v.shape={tuple(v.shape)}"
        )
    h_q, h_kv = q.shape[1], k.shape[1]
    if h_q > MAX_GRID_Y:
        raise ValueError(f"q heads Hq={h_q} exceed the {MAX_GRID_Y} a kernel grid axis allows")
    if (h_kv == 0 and h_q != 0) or (h_kv != 0 and h_q % h_kv != 0):
        raise ValueError(f"q heads Hq={h_q} must be a multiple of k/v heads Hkv={h_kv}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"head dims differ: q.shape[-1]={q.shape[-1]}, k.shape[-1]={k.shape[-1]}")
    for name, d in (("q.shape[-1]", q.shape[-1]), ("v.shape[-1]", v.shape[-1])):
        if not 1 <= d <= 256:
            raise ValueError(f"head dim {name}={d} must be between 1 and 256")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale={scale} must be a positive finite float")


def _plain_forward(module, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                   scales: Sequence[Tensor] = ()) -> None:
    """Launch the FlashAttention forward module over batch slices (see MAX_GRID_Y)."""
    if _fits_one_grid(q):
        module.forward(q, k, v, out, lse, scales=scales)
        return
    for b in _batch_slices(q.shape[0], q.shape[1]):
        module.forward(q[b], k[b], v[b], out[b], lse[b], scales=scales)


def _plain_backward(module, dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                    lse: Tensor, dlse: Tensor | None, dq: Tensor, dk: Tensor,
                    dv: Tensor) -> None:
    """Launch the FlashAttention backward module over batch slices (see MAX_GRID_Y)."""
    if _fits_one_grid(q):
        module.backward(dout, q, k, v, out, lse, dlse, dq, dk, dv)
        return
    for b in _batch_slices(q.shape[0], q.shape[1]):
        module.backward(dout[b], q[b], k[b], v[b], out[b], lse[b],
                        None if dlse is None else dlse[b], dq[b], dk[b], dv[b])


def _kernel_forward(spec: AttentionSpec, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                    lse: Tensor, inputs: list[Tensor], seed: Tensor | None,
                    scales: Sequence[Tensor] = ()) -> tuple[Tensor, Tensor]:
    """Both forward ops on the kernel paths: writes out, lse (Nq, Nk >= 1). A plain Spec
    runs the FlashAttention module, the general one the general module. scales: the FP8
    operands' (spec.fp8)."""
    module = kernel_module("attention_fwd", spec, q.device)
    with device_context(q.device):
        if is_plain(spec):
            _plain_forward(module, q, k, v, out, lse, scales)
        else:
            module.forward(q, k, v, out, lse, inputs, seed, scales=scales)
    return out, lse


def _kernel_backward(spec: AttentionSpec, dout: Tensor, q: Tensor, k: Tensor, v: Tensor,
                     out: Tensor, lse: Tensor, dlse: Tensor | None, inputs: list[Tensor],
                     dinputs: list[Tensor], seed: Tensor | None
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """Both backward ops on the kernel paths: (dq, dk, dv); adds the requires-grad
    inputs' gradients into the fp32 buffers `dinputs` (general Specs)."""
    module = kernel_module("attention_bwd", spec, q.device)
    # The kernels write every element: no memset (3 passes over HBM) beforehand.
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dlse = dlse.float().contiguous() if dlse is not None else None
    lse = lse.contiguous()
    with device_context(q.device):
        if is_plain(spec):
            _plain_backward(module, dout, q, k, v, out, lse, dlse, dq, dk, dv)
        else:
            module.backward(dout, q, k, v, out, lse, dlse, dq, dk, dv, inputs, dinputs, seed)
    return dq, dk, dv


def _spec(q: Tensor, v: Tensor, scale: float, causal: bool) -> AttentionSpec:
    return _plain_spec(q.shape[-1], v.shape[-1], q.dtype, causal, scale)


@functools.lru_cache(maxsize=256)
def _plain_spec(head_dim: int, head_dim_v: int, dtype: torch.dtype, causal: bool,
                scale: float) -> AttentionSpec:
    """One frozen Spec per signature: built and validated once, not on every call."""
    return AttentionSpec(head_dim=head_dim, head_dim_v=head_dim_v, dtype=dtype_name(dtype),
                         causal=causal, scale=scale)


def _empty_outputs(q: Tensor, v: Tensor, dtype: torch.dtype | None = None
                   ) -> tuple[Tensor, Tensor]:
    """(out, lse) to fill; out in `dtype` (q's for None: an FP8 Spec's output differs)."""
    batch, h_q, n_q, _ = q.shape
    out = q.new_empty((batch, h_q, n_q, v.shape[-1]), dtype=dtype)
    lse = q.new_empty((batch, h_q, n_q), dtype=torch.float32)
    return out, lse


@kernel_op("ioaware::flash_attention_forward")
@planned
def flash_attention_forward_op(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool
) -> tuple[Tensor, Tensor]:
    """(out, lse) = softmax(scale · Q Kᵀ [causal mask]) V, logsumexp of the scores."""
    _check_inputs(q, k, v, scale)
    out, lse = _empty_outputs(q, v)
    if lse.numel() == 0:
        return out, lse
    if k.shape[2] == 0:  # no keys: P V sums over an empty axis
        return out.zero_(), lse.fill_(float("-inf"))
    if backend_name(q.device) == "reference":
        return reference.attention_forward(q, k, v, scale, causal)
    return _kernel_forward(_spec(q, v, scale, causal), q, k, v, out, lse, [], None)


@flash_attention_forward_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool) -> tuple[Tensor, Tensor]:
    return _empty_outputs(q, v)


@kernel_op("ioaware::flash_attention_backward")
@planned
def flash_attention_backward_op(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    scale: float,
    causal: bool,
    dlse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), contiguous in the dtypes of q, k, v. dlse: gradient of lse, or None."""
    if q.numel() == 0 or k.numel() == 0:  # nothing flows: no query rows or no keys
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    if backend_name(q.device) == "reference":
        return reference.attention_backward(dout, q, k, v, out, lse, scale, causal, dlse)
    return _kernel_backward(_spec(q, v, scale, causal), dout, q, k, v, out, lse, dlse, [], [],
                            None)


@flash_attention_backward_op.register_fake
def _(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    scale: float,
    causal: bool,
    dlse: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    return (
        q.new_empty(q.shape),
        k.new_empty(k.shape),
        v.new_empty(v.shape),
    )


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale, causal = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.causal = causal
    # An unused lse gets None, not a zeros tensor (a memset launch) the backward would
    # convert and read for nothing.
    ctx.set_materialize_grads(False)


def _backward(ctx, dout: Tensor, dlse: Tensor | None, *, run=None):
    """run: what computes the gradients, the backward op unless the host path
    (codegen/host.py) gives its body."""
    q, k, v, out, lse = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv = (run or torch.ops.ioaware.flash_attention_backward)(
        dout, q, k, v, out, lse, ctx.scale, ctx.causal, dlse
    )
    return dq, dk, dv, None, None


# What passes emit and users call; Inductor's graphs hold the kernel ops (codegen/library.py).
flash_attention_op = differentiable_op("ioaware::flash_attention", flash_attention_forward_op,
                                       _backward, _setup_context)


def flash_attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float | None = None, causal: bool = False
) -> Tensor:
    """softmax(scale · Q Kᵀ [+ causal mask]) V, exact, without materialising Q Kᵀ.

    q [B, Hq, Nq, d], k [B, Hkv, Nk, d], v [B, Hkv, Nk, dv] -> [B, Hq, Nq, dv] in q.dtype.
    scale defaults to 1/sqrt(d). causal: key j visible to query i iff j <= i.
    Raises ValueError on bad ranks, dtypes, devices, head dims or Hq % Hkv != 0.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.dim() == 4 and q.shape[-1] > 0 else 1.0
    # Checked here too: with a meta (or mixed-device) input, dispatch picks the fake
    # implementation, which never reaches the op's own check.
    _check_inputs(q, k, v, float(scale))
    out, _ = torch.ops.ioaware.flash_attention(q, k, v, float(scale), bool(causal))
    return out


# ---- ioaware::attention: the general AttentionSpec (issue 3) -------------------------
#
#   ioaware::attention(q, k, v, inputs, spec, seed=None) -> (out, lse)
#       (an FP8 spec: q, k and/or v in float8_e4m3fn as spec.fp8 says, inputs ending in
#       their one-element fp32 scales, out in spec.dtype; forward only)
#   ioaware::attention_backward(dout, q, k, v, out, lse, inputs, spec, seed=None,
#                               dlse=None) -> (dq, dk, dv, d_inputs)
#
# spec: AttentionSpec.to_json(); inputs: the tensors of spec.inputs in order, read
# through their own strides (stride-0 broadcast views are free); seed: int64 [2] =
# (seed, offset), required iff spec.dropout_p > 0. d_inputs: one gradient per input
# whose TensorInput.requires_grad, in order, shaped like that input.


# The ops get the spec as JSON on every call; parse each distinct string once (frozen).
_parse_spec = functools.lru_cache(maxsize=256)(AttentionSpec.from_json)


def _check_spec_inputs(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor],
                       spec: AttentionSpec, seed: Tensor | None) -> None:
    """Raise ValueError naming the argument that disagrees with `spec`."""
    _check_inputs(q, k, v, spec.scale, spec)
    if not spec.fp8 and dtype_name(q.dtype) != spec.dtype:
        raise ValueError(f"q.dtype={q.dtype} differs from spec.dtype={spec.dtype!r}")
    if q.shape[-1] != spec.head_dim or v.shape[-1] != spec.head_dim_v:
        raise ValueError(f"head dims q.shape[-1]={q.shape[-1]}, v.shape[-1]={v.shape[-1]} "
                         f"differ from spec head_dim={spec.head_dim}, "
                         f"head_dim_v={spec.head_dim_v}")
    if len(inputs) != len(spec.inputs) + len(spec.fp8):
        raise ValueError(f"inputs has {len(inputs)} tensors; spec.inputs names "
                         f"{len(spec.inputs)}: {[t.name for t in spec.inputs]}"
                         + (f", then {len(spec.fp8)} FP8 scales ({spec.fp8})" if spec.fp8
                            else ""))
    for name, x in zip(spec.fp8, inputs[len(spec.inputs):]):
        if x.dtype != torch.float32 or x.numel() != 1 or x.device != q.device:
            raise ValueError(f"the scale of FP8 {name} must be one fp32 element on "
                             f"{q.device}; got {x.dtype}{list(x.shape)} on {x.device}")
    for t, x in zip(spec.inputs, inputs):
        if x.dim() != t.ndim:
            raise ValueError(f"input {t.name!r} must be {t.ndim}-D; got shape {tuple(x.shape)}")
        if x.dtype != INPUT_DTYPES[t.dtype]:
            raise ValueError(f"input {t.name!r} has dtype {x.dtype}; spec says {t.dtype!r}")
        if x.device != q.device:
            raise ValueError(f"input {t.name!r} is on {x.device}; q is on {q.device}")
    if not is_plain(spec) and q.shape[0] > MAX_GRID_Y:
        raise ValueError(f"batch B={q.shape[0]} exceeds the {MAX_GRID_Y} a kernel grid axis "
                         "allows for masked / modified attention")
    bad_seed = seed is None or seed.dtype != torch.int64 or tuple(seed.shape) != (2,)
    if spec.dropout_p > 0 and bad_seed:
        got = None if seed is None else f"{seed.dtype}{list(seed.shape)}"
        raise ValueError(f"seed must be an int64 tensor [2] = (seed, offset) when "
                         f"dropout_p={spec.dropout_p} > 0; got {got}")
    if spec.dropout_p > 0 and seed is not None and seed.device != q.device:
        raise ValueError(f"seed is on {seed.device}; the kernels read it on q's device "
                         f"{q.device}")


def _no_grad_inputs(spec: AttentionSpec, inputs: list[Tensor]) -> list[Tensor]:
    return [x for t, x in zip(spec.inputs, inputs) if t.requires_grad]


@kernel_op("ioaware::attention_forward")
@planned
def attention_forward_op(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor], spec: str,
                 seed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(out, lse) of the general AttentionSpec `spec` (JSON); see the block comment."""
    aspec = _parse_spec(spec)
    _check_spec_inputs(q, k, v, inputs, aspec, seed)
    out, lse = _empty_outputs(q, v, aspec.torch_dtype)
    if lse.numel() == 0:
        return out, lse
    if k.shape[2] == 0:  # no keys: P V sums over an empty axis
        return out.zero_(), lse.fill_(float("-inf"))
    inputs, scales = inputs[:len(aspec.inputs)], inputs[len(aspec.inputs):]
    if backend_name(q.device) == "reference":
        out_ref, lse_ref = reference.spec_forward(aspec, q, k, v, inputs, seed, scales)
        return out_ref.contiguous(), lse_ref.contiguous()
    return _kernel_forward(aspec, q, k, v, out, lse, inputs, seed, scales)


@attention_forward_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, inputs: list[Tensor], spec: str,
      seed: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return _empty_outputs(q, v, _parse_spec(spec).torch_dtype)


@kernel_op("ioaware::attention_backward")
@planned
def attention_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                          lse: Tensor, inputs: list[Tensor], spec: str,
                          seed: Tensor | None = None, dlse: Tensor | None = None
                          ) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    """(dq, dk, dv, gradients of the requires-grad inputs, each shaped as its input)."""
    aspec = _parse_spec(spec)
    if aspec.fp8:
        raise NotImplementedError(
            f"ioaware::attention with FP8 operands ({aspec.fp8}) has no backward: the "
            "attention pass leaves regions a gradient flows through in 16 bits")
    grad_inputs = _no_grad_inputs(aspec, inputs)
    if q.numel() == 0 or k.numel() == 0:  # nothing flows: no query rows or no keys
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                [torch.zeros_like(x) for x in grad_inputs])
    if backend_name(q.device) == "reference":
        dq, dk, dv, *dinputs = reference.spec_backward(aspec, dout, q, k, v, inputs, seed,
                                                        dlse)
        return dq.contiguous(), dk.contiguous(), dv.contiguous(), [
            d.contiguous() for d in dinputs]
    dinputs32 = [_broadcast_grad_buffer(x) for x in grad_inputs]
    dq, dk, dv = _kernel_backward(aspec, dout, q, k, v, out, lse, dlse, inputs, dinputs32, seed)
    return dq, dk, dv, [_spread_broadcast(d, x) for d, x in zip(dinputs32, grad_inputs)]


def _broadcast_grad_buffer(x: Tensor) -> Tensor:
    """Zeroed fp32 gradient buffer for input x with x's stride-0 dims kept at stride 0,
    so the kernel's atomic adds sum over the broadcast copies (no N×N buffer)."""
    storage_shape = [1 if st == 0 else n for n, st in zip(x.shape, x.stride())]
    return torch.zeros(storage_shape, dtype=torch.float32, device=x.device).expand(x.shape)


def _spread_broadcast(grad: Tensor, x: Tensor) -> Tensor:
    """The gradient of a stride-0 input, spread evenly over its broadcast copies: their
    sum (what autograd's expand backward takes) is the summed gradient, exactly as
    eager's, and nothing of the broadcast size is materialised."""
    copies = 1
    for n, st in zip(x.shape, x.stride()):
        if st == 0:
            copies *= n
    return (grad / copies if copies > 1 else grad).to(x.dtype)


@attention_backward_op.register_fake
def _(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
      inputs: list[Tensor], spec: str, seed: Tensor | None = None,
      dlse: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, list[Tensor]]:
    aspec = _parse_spec(spec)
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            [x.new_empty(x.shape) for x in _no_grad_inputs(aspec, inputs)])


def _attention_setup_context(ctx, inputs, output) -> None:
    q, k, v, extra, spec, seed = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, seed, *extra)
    ctx.spec = spec
    ctx.n_extra = len(extra)
    # An unused lse gets None, not a zeros tensor the backward would read for nothing.
    ctx.set_materialize_grads(False)


def _attention_backward(ctx, dout: Tensor | None, dlse: Tensor | None, *, run=None):
    """run: as `_backward`'s."""
    q, k, v, out, lse, seed, *extra = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dgrads = (run or torch.ops.ioaware.attention_backward)(
        dout, q, k, v, out, lse, list(extra), ctx.spec, seed, dlse)
    aspec = _parse_spec(ctx.spec)
    it = iter(dgrads)
    dextra = [next(it) if t.requires_grad else None for t in aspec.inputs]
    # torch drops trailing arguments left at their defaults (seed=None) before autograd
    # sees them; the gradients must match the arguments it saw.
    return (dq, dk, dv, dextra, None, None)[:len(ctx.needs_input_grad)]


attention_op = differentiable_op("ioaware::attention", attention_forward_op, _attention_backward,
                                 _attention_setup_context)


def attention(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec,
              inputs: Sequence[Tensor] = (), seed: Tensor | None = None) -> Tensor:
    """Exact attention of the general `spec` (masks, score mods, dropout), without
    materialising the [Nq, Nk] scores on the kernel paths. Returns out [B, Hq, Nq, dv].

    inputs: the tensors `spec.inputs` names, in order. seed: int64 [2] = (seed,
    offset), required iff spec.dropout_p > 0. Raises ValueError on any disagreement.
    """
    if not isinstance(spec, AttentionSpec):
        raise TypeError(f"spec must be an AttentionSpec; got {type(spec).__name__}")
    inputs = list(inputs)
    _check_spec_inputs(q, k, v, inputs, spec, seed)
    out, _ = torch.ops.ioaware.attention(q, k, v, inputs, _spec_json(spec), seed)
    return out


@torch.compiler.assume_constant_result
def _spec_json(spec: AttentionSpec) -> str:
    """spec.to_json(), a constant to dynamo (which cannot trace the json encoder)."""
    return _json_of(spec)


# Per call, a dict lookup (a frozen Spec hashes its fields) instead of a json encoding.
_json_of = functools.lru_cache(maxsize=256)(AttentionSpec.to_json)


def dropout_keep_mask(spec: AttentionSpec, seed: Tensor, shape: tuple[int, int, int, int],
                      device: torch.device | str) -> Tensor:
    """Bool [B, Hq, Nq, Nk]: the entries of P that ioaware::attention keeps under
    `seed` (the kernels and the reference draw the same Philox stream). Materialises
    the full mask: for tests and debugging."""
    if not spec.dropout_p > 0:
        raise ValueError(f"spec.dropout_p={spec.dropout_p}: no dropout, no keep mask")
    return reference.dropout_keep_mask(spec.dropout_p, seed, tuple(shape), device)
