"""The ATen rules: the price of every op of the canonical ATen graph the model knows.

Each rule reads its node's example values (ioaware/cost/nodes.py) and returns the op's
HBM bytes, FLOPs and transcendentals under the conventions of ioaware/cost/__init__.py;
an op with no rule is unpriced. Library kernels' behaviour past the IO model (a GEMM's
L2 spill, a softmax's exposed round trips) comes from ioaware/cost/library.py. SDPA,
which runs FlashAttention, is priced by the attention family (codegen/attention/price.py).
"""

from __future__ import annotations

import math

import sympy
import torch
from torch import fx

from ioaware.cost.algebra import Cost, sym
from ioaware.cost.library import matmul_l2_spill, softmax_row_waves
from ioaware.cost.nodes import (
    MAYBE_VIEWS,
    distinct_numel,
    is_alias,
    meta_val,
    nbytes,
    numel,
    op_name,
    output_bytes,
    output_tensor,
    reads_and_writes,
    schema_arg,
    storage_root,
)
from ioaware.cost.rules import register_price


def _free(node: fx.Node) -> Cost:
    return Cost()


# Views and metadata. reshape/contiguous/to copy when they must: priced as copies then.
register_price(
    "view", "_unsafe_view", "expand", "expand_as", "view_as", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "alias", "detach", "slice", "select", "narrow", "as_strided",
    "unflatten", "movedim", "swapaxes", "split", "split_with_sizes", "chunk",
    "unbind", "diagonal", "unfold", "lift_fresh", "real", "view_as_real", "view_as_complex",
    "sym_size", "sym_numel", "sym_stride", "sym_storage_offset", "empty", "empty_like",
    "empty_strided", "new_empty", "new_empty_strided", "empty_permuted",
    "_assert_tensor_metadata", "_assert_scalar", "_assert_async", "_functional_assert_async",
    "sym_constrain_range", "sym_constrain_range_for_size", "_functional_sym_constrain_range",
)(_free)


@register_price(*MAYBE_VIEWS)
def _maybe_copy(node: fx.Node) -> Cost:
    # read MN, write MN when the result cannot alias the input; nothing when it can.
    return Cost() if is_alias(node) else reads_and_writes(node)


register_price(
    "clone", "_to_copy", "lift_fresh_copy", "repeat", "repeat_interleave", "roll",
    "flip", "constant_pad_nd", "pad", "cat", "stack", "tril", "triu", "_unsafe_index",
    "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter", "index_copy",
    "masked_scatter", "masked_select", "nonzero", "one_hot", "index_put", "_unsafe_index_put",
    "_index_put_impl", "scatter", "upsample_nearest1d", "upsample_nearest2d",
)(reads_and_writes)  # read every input once, write the output; no arithmetic


@register_price("copy")
def _copy(node: fx.Node) -> Cost:
    # copy(self, src) and copy_: read src (at its own, broadcast, size), write self's size;
    # self's old values are overwritten, never read
    src = meta_val(storage_root(node.args[1]))
    return Cost(read_bytes=distinct_numel(src) * src.dtype.itemsize,
                write_bytes=output_bytes(node))


@register_price("fill", "zero")
def _fill(node: fx.Node) -> Cost:
    # fill(self, value) / zero_: write N; a tensor `value` is one element, read once
    value = node.args[1] if len(node.args) > 1 else None
    read = meta_val(value).dtype.itemsize if isinstance(value, fx.Node) else 0
    return Cost(read_bytes=read, write_bytes=output_bytes(node))


@register_price(
    "ones", "zeros", "full", "arange", "ones_like", "zeros_like", "full_like", "new_ones",
    "new_zeros", "new_full", "scalar_tensor", "linspace", "eye", "rand", "randn", "randint",
    "rand_like", "randn_like", "randint_like", "bernoulli", "uniform", "normal", "randperm",
    "tril_indices", "triu_indices", "exponential",
)
def _factory(node: fx.Node) -> Cost:
    # write N, read nothing (the *_like ops only read shapes). Random numbers are priced
    # by their write alone: generation is cheap next to the store.
    return Cost(write_bytes=output_bytes(node))


# FLOPs and transcendentals per output element of pointwise ops (default 1 and 0).
_POINTWISE_FLOPS: dict[str, tuple[int, int]] = {
    **{op: (1, 1) for op in (
        "exp", "exp2", "log", "log2", "log10", "log1p", "expm1", "tanh", "erf", "erfc",
        "sqrt", "rsqrt", "sin", "cos", "tan", "atan", "asin", "acos", "sinh", "cosh",
    )},
    "sigmoid": (4, 1),  # neg, exp, add, reciprocal
    "silu": (4, 1),  # x / (1 + exp(-x)): neg, exp, add, div
    "softplus": (3, 2),  # log1p(exp(x)) with a compare for the linear region
    "mish": (6, 3),  # x * tanh(softplus(x))
    "elu": (3, 1),
    "addcmul": (2, 0),
    "addcdiv": (2, 0),
    "lerp": (2, 0),
    "hardswish": (4, 0),
    "hardsigmoid": (3, 0),
    "atan2": (1, 1),
    "erfinv": (1, 1),
    "logit": (3, 1),  # log(x / (1 - x)): sub, div, log
    "log_sigmoid_forward": (4, 2),  # -softplus(-x): neg, exp, log1p, neg (and a buffer)
    "outer": (1, 0),  # a_i · b_j
    "ger": (1, 0),
}
_POINTWISE = {
    "add", "sub", "rsub", "mul", "div", "neg", "abs", "reciprocal", "square", "sign",
    "floor", "ceil", "round", "trunc", "frac", "fmod", "remainder", "clamp", "clamp_min",
    "clamp_max", "clip", "maximum", "minimum", "fmax", "fmin", "where", "masked_fill",
    "relu", "leaky_relu", "hardtanh", "threshold", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_not", "logical_and", "logical_or", "logical_xor", "bitwise_and",
    "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__", "__xor__",
    "__invert__", "isnan", "isinf", "isfinite", "nan_to_num", "copysign", "signbit",
    "heaviside", "xlogy", *_POINTWISE_FLOPS,
}


def _per_element(node: fx.Node, flops: int, transcendentals: int) -> Cost:
    n = numel(output_tensor(node))
    return reads_and_writes(node) + Cost(flops=flops * n, transcendentals=transcendentals * n)


@register_price(*_POINTWISE)
def _pointwise(node: fx.Node) -> Cost:
    # read each distinct input (its own broadcast size), write the output
    flops, transcendentals = _POINTWISE_FLOPS.get(op_name(node.target), (1, 0))
    return _per_element(node, flops, transcendentals)


@register_price("gelu")
def _gelu(node: fx.Node) -> Cost:
    if node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none") == "tanh":
        # 0.5 x (1 + tanh(c (x + 0.044715 x^3))): x^3 (2), mul, add, mul, tanh, add, mul, mul
        return _per_element(node, 9, 1)
    return _per_element(node, 5, 1)  # 0.5 x (1 + erf(x / sqrt 2)): mul, erf, add, mul, mul


@register_price("pow")
def _pow(node: fx.Node) -> Cost:
    exponent = node.args[1] if len(node.args) > 1 else None
    if isinstance(exponent, (int, float)) and float(exponent).is_integer() and exponent >= 0:
        return _per_element(node, max(int(exponent) - 1, 1), 0)  # repeated multiplies
    return _per_element(node, 1, 1)  # exp2(y * log2(x))


# Reductions: FLOPs per input element (a compare or an add each; var needs sub, mul, add).
_REDUCTION_FLOPS: dict[str, tuple[int, int]] = {
    "sum": (1, 0), "mean": (1, 0), "amax": (1, 0), "amin": (1, 0), "argmax": (1, 0),
    "argmin": (1, 0), "prod": (1, 0), "any": (1, 0), "all": (1, 0), "max": (1, 0),
    "min": (1, 0), "nansum": (1, 0), "var": (3, 0), "std": (3, 0), "var_mean": (3, 0),
    "count_nonzero": (1, 0), "aminmax": (2, 0), "logcumsumexp": (4, 1),
    "std_mean": (3, 0), "logsumexp": (4, 1), "linalg_vector_norm": (2, 0),
    "norm": (2, 0), "cumsum": (1, 0), "cumprod": (1, 0), "cummax": (1, 0), "cummin": (1, 0),
}


@register_price(*_REDUCTION_FLOPS)
def _reduction(node: fx.Node) -> Cost:
    # read N, write the reduced output (cumsum: write N)
    flops, transcendentals = _REDUCTION_FLOPS[op_name(node.target)]
    n = numel(meta_val(node.args[0]))
    return reads_and_writes(node) + Cost(flops=flops * n, transcendentals=transcendentals * n)


@register_price("max", "min")  # registered after _reduction: overrides it
def _max_min(node: fx.Node) -> Cost:
    if node.target._overloadname == "other":  # max(a, b): pointwise
        return _per_element(node, 1, 0)
    return _reduction(node)


@register_price("_softmax", "softmax", "_log_softmax", "log_softmax", "_safe_softmax")
def _softmax(node: fx.Node) -> Cost:
    """read N, write N; per element: max, sub, exp, add, and a mul by 1/sum (log_softmax:
    a sub of log(sum)): 5 FLOPs and 1 transcendental. The per-row reciprocal or log (one
    per row, not per element) is not counted. Rows too long for PyTorch's warp-per-row
    kernel run one per CTA: `softmax_row_waves` of exposed round trips."""
    x = meta_val(node.args[0])
    n = numel(x)
    dim = node.args[1] if len(node.args) > 1 else -1
    waves = sympy.S.Zero
    if isinstance(dim, int) and x.dim() > 0 and dim % x.dim() == x.dim() - 1:
        waves = softmax_row_waves(n / sym(x.shape[-1]), x.shape[-1], x.dtype.itemsize)
    return reads_and_writes(node) + Cost(flops=5 * n, transcendentals=n,
                                          exposed_round_trips=waves)


@register_price("native_layer_norm", "layer_norm", "rms_norm", "_fused_rms_norm",
         "native_group_norm", "group_norm")
def _norm(node: fx.Node) -> Cost:
    """read x, weight, bias; write y (and mean/rstd where the op returns them).
    layer/group norm: 8 FLOPs per element (mean: add; variance: sub, mul, add; normalise:
    sub, mul; affine: mul, add); RMS norm: 4 (square, add, mul by rstd, mul by weight).
    One rsqrt per normalised row."""
    name = op_name(node.target)
    x = meta_val(node.args[0])
    n = numel(x)
    if name in ("native_group_norm", "group_norm"):
        groups = node.args[6] if name == "native_group_norm" else node.args[1]
        rows = sym(x.shape[0]) * sym(groups)
    else:
        normalized = node.args[1]
        rows = n / sympy.Mul(*(sym(s) for s in normalized))
    per_element = 4 if "rms" in name else 8
    return reads_and_writes(node) + Cost(flops=per_element * n, transcendentals=rows)


@register_price("native_dropout")
def _dropout(node: fx.Node) -> Cost:
    # read N, write N + N (the output and the bool mask); a compare and a scale per element
    return _per_element(node, 2, 0)


@register_price("embedding", "index_select", "gather", "index", "take_along_dim")
def _gather(node: fx.Node) -> Cost:
    """read the indices and only the rows they pick (not the whole table), write them."""
    source = node.args[0]
    index_nodes = [n for n in node.all_input_nodes if n is not source]
    out = output_tensor(node)
    index_bytes = sum(
        (distinct_numel(meta_val(n)) * meta_val(n).dtype.itemsize for n in index_nodes
         if isinstance(meta_val(n), torch.Tensor)),
        sympy.Integer(0),
    )
    picked = numel(out) * meta_val(source).dtype.itemsize
    return Cost(read_bytes=index_bytes + picked, write_bytes=nbytes(out))


@register_price("scatter_add", "index_add", "scatter_reduce", "index_reduce")
def _scatter_add(node: fx.Node) -> Cost:
    """Out of place: read self, index and src, write self's size; one add (or reduce)
    per source element."""
    src = node.args[3] if len(node.args) > 3 else node.kwargs.get("src")
    n = numel(meta_val(src)) if isinstance(src, fx.Node) else sympy.S.Zero
    return reads_and_writes(node) + Cost(flops=n)


@register_price("sort", "argsort", "topk", "kthvalue", "median", "mode", "msort")
def _selection(node: fx.Node) -> Cost:
    """read N, write the values and indices kept; sort/argsort/msort compare N·ceil(log2 n)
    times along a dim of n (a comparison sort's bound), topk and the order statistics N."""
    x = meta_val(node.args[0])
    n_all = numel(x)
    name = op_name(node.target)
    flops = n_all
    if name in ("sort", "argsort", "msort") and x.dim() > 0:
        dim = schema_arg(node, "dim", -1)
        length = sym(x.shape[dim if isinstance(dim, int) else -1])
        flops = n_all * sympy.ceiling(sympy.log(sympy.Max(length, 2), 2))
    return reads_and_writes(node) + Cost(flops=flops)


@register_price("convolution", "_convolution", "conv1d", "conv2d", "conv3d",
         "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
def _convolution(node: fx.Node) -> Cost:
    """read x, weight (and bias), write y: 2·numel(y)·(C_in / groups)·prod(kernel) FLOPs,
    plus numel(y) for a bias. The weight [C_out, C_in/groups, k...] carries
    C_in/groups and the kernel, so 2·numel(y)·numel(weight)/C_out; a transposed
    convolution's weight is [C_in, C_out/groups, k...] and does 2·numel(x)·numel(w)/C_in."""
    x, w = meta_val(node.args[0]), meta_val(node.args[1])
    name = op_name(node.target)
    transposed = "transpose" in name or (
        name in ("convolution", "_convolution") and bool(schema_arg(node, "transposed"))
    )
    if transposed:
        flops = 2 * numel(x) * numel(w) / sym(w.shape[0])
    else:
        flops = 2 * numel(output_tensor(node)) * numel(w) / sym(w.shape[0])
    tensor_flops = flops
    bias = node.args[2] if len(node.args) > 2 else None
    if isinstance(bias, fx.Node):
        flops += numel(output_tensor(node))
    return reads_and_writes(node) + Cost(flops=flops, tensor_flops=tensor_flops)


@register_price("_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
         "native_batch_norm", "batch_norm", "instance_norm")
def _batch_norm(node: fx.Node) -> Cost:
    """read x, weight, bias, running mean and var, write y (and saved stats). Inference:
    (x - mean)·rstd·w + b is 4 FLOPs an element; training adds the batch statistics'
    4 (mean 1, variance 3). One rsqrt per channel."""
    x = meta_val(node.args[0])
    n = numel(x)
    channels = sym(x.shape[1]) if x.dim() > 1 else sympy.Integer(1)
    training = op_name(node.target) == "instance_norm" or bool(
        schema_arg(node, "training", op_name(node.target) == "_native_batch_norm_legit")
    )
    return reads_and_writes(node) + Cost(flops=(8 if training else 4) * n,
                                          transcendentals=channels)


@register_price("avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d",
         "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "_adaptive_avg_pool2d",
         "adaptive_max_pool2d")
def _pool(node: fx.Node) -> Cost:
    """read x, write y (and indices): one add or compare per window element,
    numel(y)·prod(kernel); adaptive pools, whose windows tile x, numel(x)."""
    kernel = schema_arg(node, "kernel_size")
    if isinstance(kernel, (list, tuple)) and all(isinstance(k, int) for k in kernel):
        flops = numel(output_tensor(node)) * math.prod(kernel)
    elif isinstance(kernel, int):
        flops = numel(output_tensor(node)) * kernel
    else:
        flops = numel(meta_val(node.args[0]))
    return reads_and_writes(node) + Cost(flops=flops)


@register_price("nll_loss_forward", "nll_loss", "nll_loss_nd", "nll_loss2d_forward")
def _nll_loss(node: fx.Node) -> Cost:
    """read the targets and only the log-probabilities they pick (and their weights),
    write the loss (and total weight): a gather and a sum, 1 FLOP per picked element."""
    target = meta_val(node.args[1])
    picked = numel(target)
    logp = meta_val(node.args[0])
    weight = schema_arg(node, "weight")
    weight_bytes = picked * meta_val(weight).dtype.itemsize if isinstance(weight, fx.Node) else 0
    return Cost(
        read_bytes=distinct_numel(target) * target.dtype.itemsize
        + picked * logp.dtype.itemsize + weight_bytes,
        write_bytes=output_bytes(node), flops=picked,
    )


@register_price("cross_entropy_loss")
def _cross_entropy(node: fx.Node) -> Cost:
    """log_softmax and nll_loss in one op: read logits and targets, write the loss;
    5 FLOPs and 1 exp per logit (as `_softmax`) and 1 per target."""
    logits, target = meta_val(node.args[0]), meta_val(node.args[1])
    n = numel(logits)
    return reads_and_writes(node) + Cost(flops=5 * n + numel(target), transcendentals=n)


@register_price("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss")
def _pointwise_loss(node: fx.Node) -> Cost:
    # read both, write the (reduced) loss: sub, square or abs, add per element
    return reads_and_writes(node) + Cost(flops=3 * numel(meta_val(node.args[0])))


@register_price("binary_cross_entropy", "binary_cross_entropy_with_logits")
def _bce(node: fx.Node) -> Cost:
    # -(y·log p + (1-y)·log(1-p)): 2 logs and 5 FLOPs an element (with logits: a softplus)
    return reads_and_writes(node) + Cost(flops=7 * numel(meta_val(node.args[0])),
                                          transcendentals=2 * numel(meta_val(node.args[0])))


@register_price("bucketize", "searchsorted")
def _bucketize(node: fx.Node) -> Cost:
    """read the values and the boundaries, write the indices: a binary search,
    ceil(log2 n) compares per value for n boundaries."""
    name = op_name(node.target)
    values = node.args[1] if name == "searchsorted" else node.args[0]
    bounds = node.args[0] if name == "searchsorted" else node.args[1]
    n = numel(meta_val(values)) if isinstance(values, fx.Node) else sympy.Integer(1)
    length = sym(meta_val(bounds).shape[-1])
    return reads_and_writes(node) + Cost(
        flops=n * sympy.ceiling(sympy.log(sympy.Max(length, 2), 2))
    )


@register_price("_local_scalar_dense", "item")
def _scalar_read(node: fx.Node) -> Cost:
    return Cost(read_bytes=meta_val(node.args[0]).dtype.itemsize)


# Matmuls: FLOPs = 2 * (output elements) * K, plus one add per output element for a bias.
# out numel carries M, N and every batch dim, so one formula covers mm/bmm/matmul/linear.
_MATMUL_OPERAND = {"mm": 0, "bmm": 0, "matmul": 0, "mv": 0, "dot": 0, "vdot": 0,
                   "linear": 0, "addmm": 1, "baddbmm": 1, "addmv": 1}


@register_price(*_MATMUL_OPERAND)
def _matmul(node: fx.Node) -> Cost:
    """read A (M x K) and B (K x N) (and the bias), write C (M x N): 2 M N K FLOPs, on
    tensor cores (not mv/dot); the bias add on CUDA cores. Past L2: `matmul_l2_spill`."""
    name = op_name(node.target)
    a = meta_val(node.args[_MATMUL_OPERAND[name]])
    out = output_tensor(node)
    out_elements = numel(out)
    flops = 2 * out_elements * sym(a.shape[-1])
    tensor_flops = flops if name not in ("mv", "dot", "vdot", "addmv") else sympy.S.Zero
    has_bias = name in ("addmm", "baddbmm", "addmv") or (
        name == "linear" and len(node.args) > 2 and node.args[2] is not None
    )
    if has_bias:
        flops += out_elements
    cost = reads_and_writes(node) + Cost(flops=flops, tensor_flops=tensor_flops)
    b = meta_val(node.args[_MATMUL_OPERAND[name] + 1])
    if tensor_flops == 0 or out.dim() < 2 or not isinstance(b, torch.Tensor) or b.dim() < 2:
        return cost
    N, K = sym(out.shape[-1]), sym(a.shape[-1])
    if b.dim() == 2:  # one weight: every leading dim of A is more rows of C
        batch, M = sympy.S.One, out_elements / N
    else:
        batch, M = out_elements / (sym(out.shape[-2]) * N), sym(out.shape[-2])
    spill, working_set = matmul_l2_spill(M, N, K, a.dtype.itemsize, b.dtype.itemsize)
    return cost + Cost(l2_spill_bytes=batch * spill, l2_working_set=working_set)
