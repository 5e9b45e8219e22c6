"""The scan pass on captured graphs: which spellings become one scan call, which stay.

Each test captures a small function to canonical ATen, runs the pass, and checks the
graph that comes out (one `ioaware::selective_scan` or `ioaware::linear_scan`, no
per-step nodes left) or the fallback and its reason. The rewritten graph then runs on
the torch reference path (no kernel) against eager, so a wrong rewrite cannot pass.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch._higher_order_ops.associative_scan import associative_scan, associative_scan_op
from torch.fx.experimental.proxy_tensor import make_fx

from ioaware import capture, hardware
from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers torch.ops.ioaware)
from ioaware.passes.driver import PassContext
from ioaware.passes.driver import run_pass as drive
from ioaware.passes.scan import SCAN, pricing
from ioaware.verify import relative_error

aten = torch.ops.aten
SELECTIVE = torch.ops.ioaware.selective_scan.default


def canonical(fn, *args):
    """The canonical graph of fn and a runner taking fn's arguments (dynamo orders the
    graph's inputs by first use, not as fn lists them)."""
    box = {}

    def backend(gm, example_inputs):
        box["gm"] = capture.canonicalize(gm, example_inputs)
        box["inputs"] = list(example_inputs)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    gm, inputs = box["gm"], box["inputs"]

    def run():
        out = gm(*inputs)
        return out[0] if isinstance(out, (tuple, list)) else out

    gm.run = run
    gm.inputs = inputs  # in the graph's order
    return gm


def run_pass(gm):
    out = drive(SCAN, gm, PassContext(hardware.get_profile("h100"), "reference", {}))
    return out.rewrites, out.fallbacks


def calls(gm, op):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is op]


def check(fn, *args, ops=1, fallbacks=0, op="linear_scan"):
    """Capture, rewrite, compare with eager; return (rewrites, fallbacks, graph)."""
    gm = canonical(fn, *args)
    rewrites, falls = run_pass(gm)
    assert len(rewrites) == ops and len(falls) == fallbacks, (rewrites, falls)
    target = getattr(torch.ops.ioaware, op).default
    assert len(calls(gm, target)) == ops
    assert relative_error(gm.run(), fn(*args)) <= 1e-5
    return rewrites, falls, gm


# ---------------------------------------------------------------------------------------
# spellings


def mamba_loop(readout: str, skip: bool = True, gate: bool = True):
    """A selective scan as people write it: u, delta, z [Bt, Dc, L]; A [Dc, N];
    B, C [Bt, L, N]; D [Dc]."""

    def fn(u, delta, A, B, C, D, z):
        dA = torch.exp(delta[..., None] * A[:, None, :])
        dBu = delta[..., None] * B[:, None] * u[..., None]
        h = torch.zeros(u.shape[0], u.shape[1], A.shape[1])
        ys = []
        for t in range(u.shape[2]):
            h = dA[:, :, t] * h + dBu[:, :, t]
            if readout == "sum":
                ys.append((h * C[:, t, None, :]).sum(-1))
            elif readout == "einsum":
                ys.append(torch.einsum("bdn,bn->bd", h, C[:, t]))
            else:  # transformers' spelling
                ys.append(torch.matmul(h, C[:, t, :].unsqueeze(-1))[:, :, 0])
        y = torch.stack(ys, dim=-1)
        if skip:
            y = y + u * D[None, :, None]
        if gate:
            y = y * F.silu(z)
        return y

    return fn


def mamba_inputs(bt=2, dc=6, length=7, n=4):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(bt, dc, length, generator=g), torch.rand(bt, dc, length, generator=g),
            -torch.rand(dc, n, generator=g), torch.randn(bt, length, n, generator=g),
            torch.randn(bt, length, n, generator=g), torch.randn(dc, generator=g),
            torch.randn(bt, dc, length, generator=g))


@pytest.mark.parametrize("readout", ["sum", "einsum", "matmul"])
def test_mamba_loop_becomes_one_selective_scan(readout):
    rewrites, _, gm = check(mamba_loop(readout), *mamba_inputs(), op="selective_scan")
    d = rewrites[0].detail
    assert d["form"] == "loop" and d["length"] == 7 and d["d_state"] == 4
    assert d["fused"] == ["discretize", "readout", "skip", "gate"]
    # nothing of the loop is left: no per-step selects, no stack, no (B, D, L, N) exp
    assert not calls(gm, aten.stack.default) and not calls(gm, aten.exp.default)
    assert rewrites[0].hbm_bytes_after < rewrites[0].hbm_bytes_before


def test_region_cost_prices_repeated_steps_once_and_counts_them():
    """An unrolled loop's before-cost, priced once per distinct node and multiplied, is the
    plain sum of every node's cost (compile time, issue 4: L matmul costs were L sympy
    evaluations)."""
    from ioaware import cost

    gm = canonical(mamba_loop("matmul"), *mamba_inputs(length=9))
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    keys = {pricing._cost_key(n) for n in nodes}
    assert len(keys) < len(nodes) / 3  # 9 steps share their keys
    plain = sum((c for n in nodes if (c := cost.node_cost(n)) is not None), cost.Cost.zero())
    grouped = pricing.region_cost(nodes)
    for field in ("read_bytes", "write_bytes", "flops", "transcendentals", "tensor_flops",
                  "l2_spill_bytes", "sram_bytes", "l2_working_set"):
        diff = getattr(grouped, field) - getattr(plain, field)
        assert diff == 0 or diff.simplify() == 0, field


@pytest.mark.parametrize(("skip", "gate"), [(False, False), (True, False), (False, True)])
def test_skip_and_gate_are_fused_only_when_present(skip, gate):
    rewrites, _, gm = check(mamba_loop("sum", skip, gate), *mamba_inputs(), op="selective_scan")
    fused = ["discretize", "readout"] + ["skip"] * skip + ["gate"] * gate
    assert rewrites[0].detail["fused"] == fused
    (call,) = calls(gm, SELECTIVE)
    assert (call.args[5] is not None) == skip and (call.args[6] is not None) == gate


def test_softplus_and_delta_bias_are_fused():
    """Δ = softplus(delta + bias[:, None]) as transformers writes it."""
    inner = mamba_loop("matmul")

    def fn(u, delta, A, B, C, D, z, bias):
        return inner(u, F.softplus(delta + bias[:, None]), A, B, C, D, z)

    args = (*mamba_inputs(), torch.randn(6))
    rewrites, _, gm = check(fn, *args, op="selective_scan")
    assert rewrites[0].detail["fused"] == ["discretize", "softplus", "delta_bias", "readout",
                                           "skip", "gate"]
    (call,) = calls(gm, SELECTIVE)
    assert call.args[7] is not None and call.args[8] is True
    assert not calls(gm, aten.softplus.default)


def ema(x):
    h = torch.zeros_like(x[:, 0])
    out = []
    for t in range(x.shape[1]):
        h = 0.9 * h + x[:, t]
        out.append(h)
    return torch.stack(out, 1)


def gated_rnn(a, b, h0):
    h = h0
    out = []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h.tanh())
    return torch.stack(out, 1)


def reverse_loop(a, b):
    h = torch.zeros_like(b[:, 0])
    out = [None] * a.shape[1]
    for t in reversed(range(a.shape[1])):
        h = a[:, t] * h + b[:, t]
        out[t] = h
    return torch.stack(out, 1)


def last_state(a, b):
    h = torch.zeros_like(b[:, :, 0])
    for t in range(a.shape[2]):
        h = a[:, :, t] * h + b[:, :, t]
    return h


def ab(*shape):
    g = torch.Generator().manual_seed(1)
    return torch.rand(*shape, generator=g), torch.randn(*shape, generator=g)


def test_ema_becomes_linear_scan():
    rewrites, _, _ = check(ema, ab(2, 9, 5)[1])
    assert rewrites[0].detail["op"] == "linear_scan" and rewrites[0].detail["form"] == "loop"


def test_gated_rnn_with_initial_state():
    a, b = ab(2, 9, 5)
    _, _, gm = check(gated_rnn, a, b, torch.randn(2, 5))
    (call,) = calls(gm, torch.ops.ioaware.linear_scan.default)
    assert call.args[2] is not None  # h0 passed to the kernel
    assert len(calls(gm, aten.tanh.default)) == 9  # the readout stays as it was


def test_reverse_loop():
    rewrites, _, gm = check(reverse_loop, *ab(3, 8, 4))
    assert rewrites[0].detail["reverse"]
    assert calls(gm, torch.ops.ioaware.linear_scan.default)[0].args[3] is True


def test_loop_that_only_keeps_the_last_state():
    check(last_state, *ab(2, 3, 6, 4))  # time on axis 2 of 4-D a, b


def test_slices_that_keep_the_time_axis():
    def fn(a, b, h0):
        h = h0
        out = []
        for t in range(a.shape[-1]):
            h = a[..., t:t + 1] * h + b[..., t:t + 1]
            out.append(h)
        return torch.cat(out, -1)

    a, b = ab(2, 3, 6)
    check(fn, a, b, torch.randn(2, 3, 1))


def test_step_invariant_decay_with_time_last():
    def fn(w, b):  # w [R], b [R, L]
        h = torch.zeros_like(b[:, 0])
        out = []
        for t in range(b.shape[1]):
            h = w * h + b[:, t]
            out.append(h)
        return torch.stack(out, 1)

    check(fn, torch.rand(3), ab(3, 7)[1])


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [2, 5, 8])
def test_associative_scan_generic_tree(length, reverse):
    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    def fn(a, b):
        return associative_scan(combine, (a, b), dim=1, combine_mode="generic",
                                reverse=reverse)[1]

    rewrites, _, _ = check(fn, *ab(2, length, 3))
    assert rewrites[0].detail["form"] == "associative_scan"
    assert rewrites[0].detail["reverse"] == reverse


def test_associative_scan_hop():
    """combine_mode="pointwise" keeps the higher-order op (CUDA only in eager, so the graph
    is traced here with make_fx, as capture would)."""

    def combine(a1, b1, a2, b2):
        return [a1 * a2, b1 * a2 + b2]  # operands in another order than transformers'

    def fn(a, b):
        return associative_scan_op(combine, [a, b], ())[1] * 2

    a, b = ab(6, 2, 3)
    gm = make_fx(fn, pre_dispatch=True)(a, b)
    rewrites, falls = run_pass(gm)
    assert len(rewrites) == 1 and not falls
    assert relative_error(gm(a, b), fn(a, b)) <= 1e-6


def test_associative_scan_hop_whose_products_are_read():
    """A graph that also reads the scan's Π a output (captures on CUDA keep that getitem
    alive) is still rewritten; the products become torch.cumprod of a."""

    def combine(a1, b1, a2, b2):
        return [a1 * a2, a2 * b1 + b2]

    def fn(a, b):
        prods, states = associative_scan_op(combine, [a, b], ())
        return states + prods.sum()

    a, b = ab(6, 2, 3)
    gm = make_fx(fn, pre_dispatch=True)(a, b)
    rewrites, falls = run_pass(gm)
    assert len(rewrites) == 1 and not falls
    assert relative_error(gm(a, b), fn(a, b)) <= 1e-6


def test_capture_keeps_the_hop_whole_at_any_length():
    """What dynamo records for combine_mode="pointwise" (transformers' choice on CUDA): one
    higher-order op. capture's make_fx keeps it whole, with its combine as a subgraph,
    instead of tracing its generic implementation (an odd-even tree of log2 L levels), so
    the canonical graph has the same size at every length (compile time, issue 4)."""

    def combine(a1, b1, a2, b2):
        return [a1 * a2, a2 * b1 + b2]

    def fn(a, b):
        return associative_scan_op(combine, [a, b], additional_inputs=())[1] * 2

    sizes = []
    for length in (8, 256):
        a, b = ab(length, 3)
        gm = canonical(fn, a, b)
        assert len(calls(gm, associative_scan_op)) == 1
        sizes.append(len(gm.graph.nodes))
        rewrites, falls = run_pass(gm)
        assert len(rewrites) == 1 and not falls
        assert relative_error(gm.run(), fn(a, b)) <= 1e-6
    assert sizes[0] == sizes[1]


def test_capture_keeps_a_generic_scan_computable():
    """capture flattens the vmapped combine: the canonical graph computes what eager does
    (before, its results were baked-in fake constants)."""

    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    def fn(a, b):
        return associative_scan(combine, (a, b), dim=0, combine_mode="generic")[1]

    a, b = ab(11, 3)
    gm = canonical(fn, a, b)
    assert not [n for n in gm.graph.nodes if n.op == "get_attr"]
    assert relative_error(gm.run(), fn(a, b)) <= 1e-6


def logspace(a, b):
    p = torch.exp(torch.cumsum(torch.log(a), dim=1))
    return p * torch.cumsum(b / p, dim=1)


def cumprod_form(a, b):
    p = torch.cumprod(a, dim=1)
    return torch.cumsum(b / p, dim=1) * p


@pytest.mark.parametrize("fn", [logspace, cumprod_form])
def test_closed_forms_become_linear_scan(fn):
    a, b = ab(2, 9, 4)
    rewrites, _, gm = check(fn, 0.5 + 0.5 * a, b)
    assert rewrites[0].detail["form"] == "cumsum"
    assert not calls(gm, aten.cumsum.default) and not calls(gm, aten.div.Tensor)


def test_closed_form_selective_scan():
    """Mamba in closed form, the decay given in log space: still one selective_scan."""

    def fn(u, delta, A, B, C):
        log_a = delta[..., None] * A[:, None, :]
        dbu = delta[..., None] * B[:, None] * u[..., None]
        p = torch.exp(torch.cumsum(log_a, 2))
        return torch.einsum("bdln,bln->bdl", p * torch.cumsum(dbu / p, 2), C)

    u, delta, A, B, C, _, _ = mamba_inputs()
    rewrites, _, _ = check(fn, u, 0.1 * delta, A, B, C, op="selective_scan")
    assert rewrites[0].detail["fused"] == ["discretize", "readout"]


# ---------------------------------------------------------------------------------------
# what stays eager, and why


def test_closed_form_on_two_axes_stays_eager():
    def fn(a, b):
        p = torch.exp(torch.cumsum(torch.log(a), dim=1))
        return p * torch.cumsum(b / p, dim=2)

    a, b = ab(2, 5, 5)
    assert "different axes" in fallback(fn, 0.5 + 0.5 * a, b)


def fallback(fn, *args):
    gm = canonical(fn, *args)
    rewrites, falls = run_pass(gm)
    assert relative_error(gm.run(), fn(*args)) <= 1e-6
    assert not rewrites and falls, (rewrites, falls)
    return " ".join(f.reason for f in falls)


def test_steps_with_different_slices_are_not_rerolled():
    def fn(a, b):
        h = torch.zeros_like(b[:, 0])
        out = []
        for t in range(a.shape[1]):
            h = a[:, t] * h + (b[:, t] if t != 3 else b[:, 2])
            out.append(h)
        return torch.stack(out, 1)

    assert "the steps differ" in fallback(fn, *ab(2, 7, 3))


def test_steps_with_a_changed_op_are_not_rerolled():
    def fn(a, b):
        h = torch.zeros_like(b[:, 0])
        out = []
        for t in range(a.shape[1]):
            h = a[:, t] * h + b[:, t] if t != 3 else a[:, t] * h - b[:, t]
            out.append(h)
        return torch.stack(out, 1)

    assert "covers 3 of the 7 steps" in fallback(fn, *ab(2, 7, 3))


def test_an_intermediate_used_elsewhere_is_not_rerolled():
    def fn(a, b):
        h = torch.zeros_like(b[:, 0])
        out, side = [], 0
        for t in range(a.shape[1]):
            decayed = a[:, t] * h
            side = side + decayed if t == 2 else side
            h = decayed + b[:, t]
            out.append(h)
        return torch.stack(out, 1) + side[:, None]

    assert "used elsewhere" in fallback(fn, *ab(2, 6, 3))


def test_matrix_state_transition_stays_eager():
    def fn(m, b):
        h = torch.zeros_like(b[:, 0])
        out = []
        for t in range(b.shape[1]):
            h = (m @ h.unsqueeze(-1)).squeeze(-1) + b[:, t]
            out.append(h)
        return torch.stack(out, 1)

    reason = fallback(fn, torch.randn(4, 4) * 0.3, ab(2, 6, 4)[1])
    assert "matrix product" in reason and "diagonal" in reason


def test_non_associative_combine_stays_eager():
    def combine(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1] * right[1]

    def fn(a, b):
        return associative_scan(combine, (a, b), dim=1, combine_mode="generic")[1]

    assert "does not compute the linear recurrence" in fallback(fn, *ab(2, 8, 3))


def test_hop_with_another_combine_stays_eager():
    def combine(a1, b1, a2, b2):
        return [a1 * a2, a2 * b1 + b2 * b2]

    gm = make_fx(lambda a, b: associative_scan_op(combine, [a, b], ())[1],
                 pre_dispatch=True)(*ab(6, 3))
    rewrites, falls = run_pass(gm)
    assert not rewrites and "not a2·b1 + b2" in falls[0].reason


def test_readout_that_differs_keeps_the_loop_readout():
    """The recurrence is still one scan; the readout (different at one step) stays."""

    def fn(a, b):
        h = torch.zeros_like(b[:, 0])
        out = []
        for t in range(a.shape[1]):
            h = a[:, t] * h + b[:, t]
            out.append(h.sum(-1) if t != 2 else h.mean(-1))
        return torch.stack(out, 1)

    rewrites, _, gm = check(fn, *ab(2, 6, 3))
    assert "differs" in rewrites[0].detail["not_fused"]
    assert len(calls(gm, aten.sum.dim_IntList)) == 5


def test_short_loops_stay_as_they_are():
    def one_step(a, b):
        return a[:, 0] * torch.ones_like(b[:, 0]) + b[:, 0]

    gm = canonical(one_step, *ab(2, 1, 3))
    assert run_pass(gm) == ([], [])


@pytest.mark.parametrize("associative_scan_", [False, True], ids=["loop", "assoc"])
def test_mamba_cache_gets_the_last_state(associative_scan_):
    """With use_cache, transformers copies the last state into its cache: the fused scan's
    h_last feeds that copy (reference path here, no kernel)."""
    pytest.importorskip("transformers")
    from hf_models import mamba, quietly

    import ioaware

    torch.manual_seed(0)
    model = quietly(mamba, associative_scan_)
    if model is None:
        pytest.skip("this transformers has no use_associative_scan")
    model.eval()
    ids = torch.randint(0, 128, (2, 6))
    with torch.no_grad():
        out = ioaware.compile(model)(ids, use_cache=True)
        ref = model(ids, use_cache=True)
    assert relative_error(out.logits, ref.logits) <= 1e-5
    for layer in range(model.config.num_hidden_layers):
        got = out.cache_params.get_recurrent_state(layer)
        want = ref.cache_params.get_recurrent_state(layer)
        assert relative_error(got, want) <= 1e-5, layer
