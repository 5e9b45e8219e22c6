"""The fused scan kernels (selective and linear), run by Triton's interpreter, against
an eager time loop.

Every example draws fresh shapes (L not a power of two, L = 0 and 1, several chunks of
the interpreter's 8-step tiles, partial channel blocks), dtypes, layouts (transposed
and stride-0 broadcast inputs), optional parts and values, and compares the outputs
and the gradient of every input with the recurrence written as a plain Python loop
over time, evaluated in float64 by torch autograd on the very same (rounded) inputs.
Tolerance: ‖a − b‖ / ‖b‖ within ioaware.verify.TOLERANCE of the output's dtype.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm90 import compile_sm90, has_ptx_backend, import_compiled

from ioaware.codegen.scan import op as scan_ops
from ioaware.verify import TOLERANCE

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LENGTHS = [0, 1, 2, 3, 7, 15, 16, 17, 33, 64, 129, 300]


# Every test here runs the kernels under the interpreter (tests/interp/conftest.py).
pytestmark = pytest.mark.usefixtures("interpreted_kernels")


def eager_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, h0):
    """Mamba's recurrence, one time step per iteration, channel d reading group
    d // (Dc / G) of B and C. Returns (y, h_last) in the inputs' (float64) dtype."""
    batch, channels, length = u.shape
    group_of = torch.arange(channels, device=u.device) // (channels // B.shape[1])
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = h0 if h0 is not None else u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        b_t, c_t = B[:, group_of, t], C[:, group_of, t]  # [Bt, Dc, N]
        h = torch.exp(dt[:, :, t, None] * A) * h + dt[:, :, t, None] * b_t * u[:, :, t, None]
        y = (c_t * h).sum(-1)
        if D is not None:
            y = y + D * u[:, :, t]
        if z is not None:
            y = y * F.silu(z[:, :, t])
        ys.append(y)
    y = torch.stack(ys, -1) if ys else u.new_zeros(batch, channels, 0)
    return y, h


def eager_linear_scan(a, b, h0, reverse):
    rows, length, features = a.shape
    h = h0 if h0 is not None else a.new_zeros(rows, features)
    out = [None] * length
    for t in (range(length - 1, -1, -1) if reverse else range(length)):
        h = a[:, t] * h + b[:, t]
        out[t] = h
    return torch.stack(out, 1) if length else a.new_zeros(rows, 0, features)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    assert torch.isfinite(actual).all(), "non-finite value in kernel result"
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype) -> None:
    assert actual.shape == expected.shape, f"{name}: {actual.shape} vs {expected.shape}"
    err = rel_err(actual, expected)
    assert err <= TOLERANCE[dtype], f"{name}: relative error {err:.3g} > {TOLERANCE[dtype]}"


def make_selective(seed, batch, channels, groups, length, n, dtype, delta_fp32, parts,
                   layout):
    """Inputs of one selective scan; `parts` names the optional inputs present."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(dt)

    if layout == "transposed":  # as HF Mamba hands them over: [Bt, L, Dc].transpose(1, 2)
        u = rand(batch, length, channels).transpose(1, 2)
    else:
        u = rand(batch, channels, length)
    delta = rand(batch, channels, length, dt=torch.float32 if delta_fp32 else dtype,
                 scale=0.5, shift=-0.5 if "softplus" in parts else 0.3).abs()
    if "softplus" in parts:
        delta = delta - 1.0  # negative pre-activations too
    A = -torch.rand(channels, n, generator=g) * 2.0
    if layout == "broadcast":  # one B/C for every group, stride 0 over groups
        B = rand(batch, 1, length, n).expand(batch, groups, length, n)
        C = rand(batch, 1, length, n).expand(batch, groups, length, n)
    else:
        B, C = rand(batch, groups, length, n), rand(batch, groups, length, n)
    D = rand(channels, dt=torch.float32) if "D" in parts else None
    z = rand(batch, channels, length) if "z" in parts else None
    delta_bias = rand(channels, dt=torch.float32, scale=0.3) if "delta_bias" in parts else None
    h0 = rand(batch, channels, n, dt=torch.float32) if "h0" in parts else None
    return u, delta, A, B, C, D, z, delta_bias, "softplus" in parts, h0


def check_selective(inputs, seed: int, h_last_grad: bool = True) -> None:
    u, delta, A, B, C, D, z, delta_bias, softplus, h0 = inputs
    tensors = [u, delta, A, B, C, D, z, delta_bias, h0]
    leaves = [None if t is None else t.detach().requires_grad_() for t in tensors]
    y, h_last = scan_ops.selective_scan(*leaves[:8], delta_softplus=softplus, h0=leaves[8])
    assert y.dtype == u.dtype and y.is_contiguous() and h_last.dtype == torch.float32

    ref_leaves = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    y_ref, h_ref = eager_selective_scan(*ref_leaves[:8], softplus, ref_leaves[8])
    assert_close("y", y, y_ref, u.dtype)
    assert_close("h_last", h_last, h_ref, torch.float32)
    if u.shape[2] == 0 or u.numel() == 0:
        return

    g = torch.Generator().manual_seed(seed + 1)
    dy = torch.randn(y.shape, generator=g).to(device=y.device, dtype=y.dtype)
    dh = torch.randn(h_last.shape, generator=g).to(y.device)
    outs, cots = [y], [dy]
    ref_outs, ref_cots = [y_ref], [dy.double()]
    if h_last_grad:
        outs.append(h_last)
        cots.append(dh)
        ref_outs.append(h_ref)
        ref_cots.append(dh.double())
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"]
    present = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(outs, [leaves[i] for i in present], cots)
    ref_grads = torch.autograd.grad(ref_outs, [ref_leaves[i] for i in present], ref_cots)
    for i, gk, gr in zip(present, grads, ref_grads):
        assert gk.dtype == tensors[i].dtype, f"d{names[i]} dtype {gk.dtype}"
        assert_close(f"d{names[i]}", gk, gr, tensors[i].dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 2),
    channels_groups=st.sampled_from([(1, 1), (3, 1), (4, 2), (5, 5), (6, 2), (6, 3), (4, 1)]),
    length=st.sampled_from(LENGTHS),
    n=st.sampled_from([1, 2, 3, 4, 16]),
    dtype=st.sampled_from(DTYPES),
    delta_fp32=st.booleans(),
    parts=st.sets(st.sampled_from(["D", "z", "delta_bias", "softplus", "h0"])),
    layout=st.sampled_from(["contiguous", "transposed", "broadcast"]),
)
def test_selective_scan_matches_eager_loop(seed, batch, channels_groups, length, n, dtype,
                                           delta_fp32, parts, layout):
    channels, groups = channels_groups
    # Long sequences with small widths keep one example within a few interpreted seconds.
    if length >= 64:
        batch, n = 1, min(n, 4)
    inputs = make_selective(seed, batch, channels, groups, length, n, dtype, delta_fp32,
                            parts, layout)
    check_selective(inputs, seed)


def test_selective_scan_thousands_of_steps():
    """A few thousand steps: hundreds of chunks carrying the state forward and back."""
    inputs = make_selective(7, 1, 2, 1, 2100, 2, torch.float32, False,
                            {"D", "z", "delta_bias", "softplus", "h0"}, "contiguous")
    check_selective(inputs, 7)


def test_selective_scan_wide_state():
    """N = 256 (the largest d_state) and a partial channel block."""
    inputs = make_selective(3, 1, 3, 1, 9, 256, torch.bfloat16, True, {"D", "h0"}, "contiguous")
    check_selective(inputs, 3)


def test_selective_scan_only_h_last_used():
    """y unused: the backward gets dy = None and must still give every gradient."""
    u, delta, A, B, C, D, _, _, _, h0 = make_selective(
        5, 2, 4, 2, 11, 3, torch.float32, False, {"h0", "D"}, "contiguous")
    leaves = [t.detach().requires_grad_() for t in (u, delta, A, B, C, h0)]
    _, h_last = scan_ops.selective_scan(*leaves[:5], D=D, h0=leaves[5])
    grads = torch.autograd.grad(h_last.square().sum(), leaves)
    ref = [t.detach().double().requires_grad_() for t in (u, delta, A, B, C, h0)]
    _, h_ref = eager_selective_scan(*ref[:5], D.double(), None, None, False, ref[5])
    ref_grads = torch.autograd.grad(h_ref.square().sum(), ref, allow_unused=True)
    assert ref_grads[4] is None and torch.equal(grads[4], torch.zeros_like(C))  # C reads h
    for name, gk, gr in zip(["u", "delta", "A", "B", "h0"], grads[:4] + grads[5:],
                            ref_grads[:4] + ref_grads[5:]):
        assert_close(f"d{name}", gk, gr, torch.float32)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 3),
    length=st.sampled_from(LENGTHS),
    features=st.sampled_from([1, 3, 4, 5, 9]),
    dtypes=st.sampled_from([(torch.float32, torch.float32), (torch.float16, torch.float16),
                            (torch.bfloat16, torch.bfloat16), (torch.float32, torch.bfloat16)]),
    with_h0=st.booleans(),
    reverse=st.booleans(),
    layout=st.sampled_from(["contiguous", "transposed", "broadcast"]),
)
def test_linear_scan_matches_eager_loop(seed, rows, length, features, dtypes, with_h0,
                                        reverse, layout):
    g = torch.Generator().manual_seed(seed)
    a_dtype, b_dtype = dtypes
    if layout == "broadcast":  # one decay for every step, stride 0 along L
        a = torch.rand(rows, 1, features, generator=g).to(a_dtype).expand(rows, length,
                                                                           features)
    elif layout == "transposed":
        a = torch.rand(rows, features, length, generator=g).to(a_dtype).transpose(1, 2)
    else:
        a = torch.rand(rows, length, features, generator=g).to(a_dtype)
    b = torch.randn(rows, length, features, generator=g).to(b_dtype)
    h0 = torch.randn(rows, features, generator=g) if with_h0 else None
    leaves = [None if t is None else t.detach().requires_grad_() for t in (a, b, h0)]
    h = scan_ops.linear_scan(leaves[0], leaves[1], h0=leaves[2], reverse=reverse)
    out_dtype = torch.promote_types(a_dtype, b_dtype)
    assert h.dtype == out_dtype and h.is_contiguous()
    ref_leaves = [None if t is None else t.detach().double().requires_grad_()
                  for t in (a, b, h0)]
    h_ref = eager_linear_scan(*ref_leaves, reverse)
    assert_close("h", h, h_ref, out_dtype)
    if h.numel() == 0:
        return
    dh = torch.randn(h.shape, generator=g).to(out_dtype)
    present = [i for i, t in enumerate(leaves) if t is not None]
    grads = torch.autograd.grad(h, [leaves[i] for i in present], dh)
    ref_grads = torch.autograd.grad(h_ref, [ref_leaves[i] for i in present], dh.double())
    for i, gk, gr in zip(present, grads, ref_grads):
        assert_close(("da", "db", "dh0")[i], gk, gr, (a, b, h0)[i].dtype)


def test_empty_sequence_passes_the_state_through():
    u = torch.randn(2, 3, 0)
    A = -torch.rand(3, 4)
    B = torch.randn(2, 1, 0, 4)
    h0 = torch.randn(2, 3, 4, requires_grad=True)
    y, h_last = scan_ops.selective_scan(u, u, A, B, B, h0=h0)
    assert y.shape == (2, 3, 0)
    assert torch.equal(h_last, h0.detach())
    (g,) = torch.autograd.grad(h_last.sum(), h0)
    assert torch.equal(g, torch.ones_like(h0))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(u=a["u"][0]), "u must be 3-D"),
        (lambda a: a.update(delta=a["delta"][:, :, :3]), "delta.shape"),
        (lambda a: a.update(A=a["A"][:, :0]), "d_state"),
        (lambda a: a.update(B=a["B"][:, :, :, :2]), "B.shape"),
        (lambda a: a.update(C=torch.randn(2, 3, 5, 4)), "groups G"),
        (lambda a: a.update(D=torch.randn(5)), "D.shape"),
        (lambda a: a.update(h0=torch.randn(2, 4, 3)), "h0.shape"),
        (lambda a: a.update(z=a["u"].to(torch.int32)), "z.dtype"),
    ],
)
def test_selective_scan_rejects_bad_inputs(change, message):
    args = {"u": torch.randn(2, 4, 5), "delta": torch.rand(2, 4, 5), "A": -torch.rand(4, 4),
            "B": torch.randn(2, 2, 5, 4), "C": torch.randn(2, 2, 5, 4), "D": None, "z": None,
            "h0": None}
    change(args)
    with pytest.raises(ValueError, match=message):
        scan_ops.selective_scan(**args)


def test_linear_scan_rejects_bad_inputs():
    a = torch.rand(2, 5, 3)
    with pytest.raises(ValueError, match="b.shape"):
        scan_ops.linear_scan(a, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match="h0.shape"):
        scan_ops.linear_scan(a, a, h0=torch.rand(3, 2))
    with pytest.raises(ValueError, match="a must be 3-D"):
        scan_ops.linear_scan(a[0], a[0])


def test_ops_trace_with_fake_tensors():
    """The fake implementations give the shapes and dtypes the kernels produce."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        u = torch.empty(2, 6, 10, dtype=torch.bfloat16)
        y, h = torch.ops.ioaware.selective_scan(u, u.float(), torch.empty(6, 16),
                                                torch.empty(2, 3, 10, 16, dtype=torch.bfloat16),
                                                torch.empty(2, 3, 10, 16, dtype=torch.bfloat16),
                                                None, u, None, True, None)
        out = torch.ops.ioaware.linear_scan(torch.empty(3, 7, 5, dtype=torch.bfloat16),
                                            torch.empty(3, 7, 5), None, True)
    assert (y.shape, y.dtype, h.shape, h.dtype) == ((2, 6, 10), torch.bfloat16, (2, 6, 16),
                                                    torch.float32)
    assert (out.shape, out.dtype) == ((3, 7, 5), torch.float32)


@pytest.mark.parametrize("optional", [False, True])
def test_opcheck(optional):
    """torch.library.opcheck: schema, fake tensors, autograd registration, aot_dispatch."""
    g = torch.Generator().manual_seed(11)
    batch, channels, length, n = 2, 4, 9, 3
    leaves = [
        torch.randn(batch, channels, length, generator=g),
        torch.rand(batch, channels, length, generator=g),
        -torch.rand(channels, n, generator=g),
        torch.randn(batch, 2, length, n, generator=g),
        torch.randn(batch, 2, length, n, generator=g),
    ]
    if optional:
        leaves += [torch.randn(channels, generator=g), torch.randn(batch, channels, length,
                                                                   generator=g),
                   torch.randn(channels, generator=g)]
    else:
        leaves += [None, None, None]
    h0 = torch.randn(batch, channels, n, generator=g) if optional else None
    args = [None if t is None else t.requires_grad_() for t in leaves]
    torch.library.opcheck(torch.ops.ioaware.selective_scan.default,
                          (*args, optional, None if h0 is None else h0.requires_grad_()))
    a = torch.rand(2, 5, 3, generator=g).requires_grad_()
    b = torch.randn(2, 5, 3, generator=g).requires_grad_()
    h0l = torch.randn(2, 3, generator=g).requires_grad_() if optional else None
    torch.library.opcheck(torch.ops.ioaware.linear_scan.default, (a, b, h0l, optional))


def test_scan_spec_validates_and_keys():
    from ioaware.codegen.scan.spec import ScanSpec

    spec = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, has_z=True)
    assert spec.key() == ScanSpec(kind="selective", dtype="bfloat16", d_state=16,
                                  has_z=True).key()
    assert spec.key() != ScanSpec(kind="selective", dtype="bfloat16", d_state=16).key()
    with pytest.raises(ValueError, match="kind"):
        ScanSpec(kind="cumsum", dtype="float32")
    with pytest.raises(ValueError, match="d_state"):
        ScanSpec(kind="selective", dtype="float32", d_state=257)
    with pytest.raises(ValueError, match="dtype"):
        ScanSpec(kind="linear", dtype="float64")


def test_bench_scan_command_parses():
    from ioaware.cli import build_parser

    options = build_parser().parse_args(["bench", "scan", "--seqlen", "64", "--no-gate"])
    assert (options.seqlen, options.gate, options.channels) == (64, False, 1536)


def test_bench_scan_isolated_baseline_times_out():
    """A baseline that gives no result in time is a row saying so, not a hung bench."""
    from ioaware.bench.scan import ScanProblem, _measure_isolated

    row = _measure_isolated("slow", ScanProblem(batch=1, channels=2, seqlen=4), 4,
                            timeout_s=0.05, warmup_ms=1, rep_ms=1, bandwidth=1e12)
    assert row.fwd_ms is None and row.ok is None
    assert "no result within 0.05 s" in row.note


@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
def test_scan_kernels_compile_for_sm90(tmp_path):
    """The compiled-only paths (inline PTX exp2/lg2, L2 prefetch, the tuned tiles) build
    for sm_90 here, no GPU needed: a break shows up in CI, not first on the device."""
    from ioaware.codegen.scan import backward as scan_bwd
    from ioaware.codegen.scan import forward as scan_fwd
    from ioaware.codegen.scan.spec import ScanSpec

    spec = ScanSpec(kind="selective", dtype="bfloat16", d_state=16, delta_dtype="bfloat16",
                    bc_dtype="bfloat16", has_D=True, has_z=True, has_delta_bias=True,
                    delta_softplus=True)
    low = {"DOut", "U", "Delta", "B", "C", "Z", "Y", "DU", "DDelta", "DZ"}

    def arg_type(name: str) -> str:
        if name.startswith("stride") or name in ("DC", "L", "L_BUCKET", "N_CHUNKS", "G"):
            return "i32"
        return "*bf16" if name in low else "*fp32"

    for kind, render, name in (("fwd", scan_fwd.render_forward, "_selective_scan_fwd"),
                               ("bwd", scan_bwd.render_backward, "_selective_scan_bwd")):
        module = import_compiled(render(spec, interpret=False), tmp_path / f"scan_sm90_{kind}.py")
        block_d, block_l, warps = module.TUNE_CONFIGS[0]
        const = {"BLOCK_D": block_d, "BLOCK_L": block_l, "CPG": 64, "PREFETCH": 4}
        kernel = compile_sm90(getattr(module, name), const, arg_type, num_warps=warps)
        ptx = kernel.asm["ptx"]
        assert "ex2.approx.ftz.f32" in ptx and "prefetch.global.L2" in ptx
        assert "0xffff0000;" in ptx  # bf16 pairs upcast in place (`_to_f32`)
        if kind == "fwd":
            # One step in four on the FMA pipe: the select is resolved per register, so
            # a quarter of the decays' MUFU ex2 are gone (not computed both ways).
            poly = compile_sm90(getattr(module, name), {**const, "POLY_EVERY": 4}, arg_type,
                                num_warps=warps).asm["ptx"]
            decays = block_l * 16 * block_d // (32 * warps)  # per thread per chunk
            assert ptx.count("ex2.approx.ftz") - poly.count("ex2.approx.ftz") == decays // 4
        if kind == "bwd":
            # The dB/dC/dA/dD sums are fire-and-forget reductions: an acquire-release
            # atomic fences the whole GPU's memory before every chunk's adds.
            assert "red.global.gpu.relaxed.add" in ptx
            assert ".acq" not in ptx and "fence" not in ptx and "membar" not in ptx


# ---- the polynomial exp2 (issue 17): the primitive over the decays' range, then the kernels

_PROBE = '''

@triton.jit
def _probe_exp2_poly(X, Y, SIZE: tl.constexpr):
    offs = tl.arange(0, SIZE)
    tl.store(Y + offs, _exp2_poly(tl.load(X + offs)))
'''


def _selective_module(kind: str, spec, poly_every: int, interpret: bool = True):
    """The forward or backward module of `spec` (rendered here, not from the op's
    cache), its exp2 on the FMA pipe in one step of every `poly_every`."""
    from ioaware.codegen.cache import _import_text
    from ioaware.codegen.scan import backward as scan_bwd
    from ioaware.codegen.scan import forward as scan_fwd

    render = scan_fwd.render_forward if kind == "fwd" else scan_bwd.render_backward
    text = render(spec, interpret=interpret) + (_PROBE if kind == "fwd" else "")
    module = _import_text(f"scan_poly_{kind}_{poly_every}_{int(interpret)}_{spec.key()}",
                          text, interpret)
    module.POLY_EVERY = poly_every
    return module


def check_poly_scan(inputs, spec, poly_every: int, interpret: bool, dtype) -> None:
    """Forward and backward modules of `spec` at `poly_every` on `inputs`
    (make_selective's, softplus on, no h0 or with it per `spec`) against the float64 loop:
    y and h_last, and every gradient, within TOLERANCE[dtype]."""
    u, delta, A, B, C, D, z, delta_bias, _, h0 = inputs
    fwd = _selective_module("fwd", spec, poly_every, interpret)
    bwd = _selective_module("bwd", spec, poly_every, interpret)
    y = torch.full_like(u, float("nan"))
    h_last = torch.full((*u.shape[:2], A.shape[1]), float("nan"), device=u.device)
    fwd.forward(u, delta, A, B, C, D, z, delta_bias, h0, y, h_last)

    tensors = [u, delta, A, B, C, D, z, delta_bias, h0]
    present = [i for i, t in enumerate(tensors) if t is not None]
    ref = [None if t is None else t.detach().double().requires_grad_() for t in tensors]
    y_ref, h_ref = eager_selective_scan(*ref[:8], True, ref[8])
    assert_close("y", y, y_ref, dtype)
    assert_close("h_last", h_last, h_ref, torch.float32)

    g = torch.Generator().manual_seed(12)
    dy = torch.randn(y.shape, generator=g).to(device=u.device, dtype=u.dtype)
    dh = torch.randn(h_last.shape, generator=g).to(u.device)
    grads = bwd.backward(dy, dh, u, delta, A, B, C, D, z, delta_bias, h0,
                         [t.dtype if t is not None else torch.float32 for t in tensors])
    ref_grads = torch.autograd.grad([y_ref, h_ref], [ref[i] for i in present],
                                    [dy.double(), dh.double()])
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias", "h0"]
    for i, want in zip(present, ref_grads):
        assert_close(f"d{names[i]}", grads[i], want, tensors[i].dtype)


def run_exp2_probe(module, parts, size: int):
    """(x, y, exp2(x) in float64): x the fp32 concatenation of `parts` padded with zeros
    to `size`, y = `module._probe_exp2_poly` of it (a module rendered with `_PROBE`)."""
    x = torch.cat(parts)
    x = torch.cat([x, torch.zeros(size - len(x))]).float()
    y = torch.empty_like(x)
    module._probe_exp2_poly[(1,)](x, y, SIZE=size)
    return x, y, torch.exp2(x.double())


def test_exp2_poly_matches_exp2_over_the_decay_range():
    """`_exp2_poly` against exp2 in float64 over every exponent a decay can have
    (dt·A·log2 e <= 0 down to past the underflow), plus the ends. Error analysis
    (codegen/scan/forward.py, docs/kernels.md): the degree-5 minimax is 9.1e-8 relative
    on [-1/2, 1/2], fp32 Horner adds a few ulp, 2^n is exact: <= 2.4e-7 (2^-22, MUFU
    ex2.approx's own bound) for x >= -126; below, 2^-126 where exp2 < 2^-126."""
    from ioaware.codegen.scan.spec import ScanSpec

    module = _selective_module("fwd", ScanSpec(kind="selective", dtype="float32"), 0)
    size = 1 << 17
    g = torch.Generator().manual_seed(0)
    # Every binade of the decay range; the integers -130..0 among them.
    dense = torch.linspace(-130.0, 0.0, size // 2)
    wide = -torch.rand(size // 4, generator=g) * 1e4  # dt·|A| far past the underflow
    tiny = -torch.rand(size // 4 - 512, generator=g) * 2.0 ** -20  # decays near 1
    ends = torch.tensor([0.0, -0.0, -0.5, 0.5, -125.5, -126.0, -126.0 + 2.0 ** -16,
                         -126.0 - 2.0 ** -16, -149.0, -150.0, 127.0, 127.5, 128.0, 200.0,
                         float("inf"), float("-inf"), float("nan")])
    ints = torch.arange(-140.0, 140.0)
    x, y, want = run_exp2_probe(module, [dense, wide, tiny, ends, ints], size)
    normal = x >= -126.0
    rel = ((y.double() - want).abs() / want)[normal & torch.isfinite(want) & (x < 128)]
    assert rel.max().item() <= 2.0 ** -22, f"relative error {rel.max().item():.3g}"
    under = x < -126.0
    assert (y[under] >= 0).all() and ((y[under].double() - want[under]).abs()
                                      <= 2.0 ** -126).all()
    # Integers are exact (0 -> 1: padded steps leave the state unchanged), 128 and up
    # overflow as exp2 does, a NaN stays NaN.
    exact = x[normal & (x == x.round()) & (x < 128)]
    assert torch.equal(y[normal & (x == x.round()) & (x < 128)], torch.exp2(exact))
    assert torch.isinf(y[x >= 128]).all() and torch.isnan(y[x.isnan()]).all()


@pytest.mark.parametrize("poly_every", [1, 3])
def test_selective_scan_with_poly_exp2_matches_eager_loop(poly_every):
    """Forward and backward with every step's (1) or every third step's (3) decays on
    the FMA pipe, fp32 so the check is tight: outputs and every gradient against the
    float64 loop. L = 40 spans three interpreted chunks with a ragged end."""
    from ioaware.codegen.scan.spec import ScanSpec

    inputs = make_selective(11, 1, 3, 1, 40, 4, torch.float32, True,
                            {"D", "z", "delta_bias", "softplus", "h0"}, "contiguous")
    spec = ScanSpec(kind="selective", dtype="float32", d_state=4, has_D=True, has_z=True,
                    has_delta_bias=True, delta_softplus=True, has_h0=True)
    check_poly_scan(inputs, spec, poly_every, True, torch.float32)