"""The SSD decode step kernel (`ioaware::ssd_step`, Mamba-2 at L = 1) run by Triton's
interpreter, against the step written in float64 torch: y and the state it updates in
place, over heads and groups, head_dim and d_state below and past the tile widths,
dtypes of x and of the state, strided layouts and the optional parts (D, dt_bias,
softplus, the dt clamp). Tolerance: ‖a − b‖ / ‖b‖ within ioaware.verify.TOLERANCE of
the lower-precision dtype involved.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sm90 import compile_sm90, has_ptx_backend, import_compiled

from ioaware.codegen.ssd import step_op
from ioaware.verify import TOLERANCE

pytestmark = pytest.mark.usefixtures("interpreted_kernels")

CLAMP = (0.05, 0.6)  # binds on both sides for the dt drawn below


def eager_step(state, x, dt, A, B, C, D, dt_bias, softplus, dt_limit):
    """S' = exp(dt A) S + dt x Bᵀ, y = S' C + D x in float64; head h reads group
    h // (H / G). Returns (y, S')."""
    heads = x.shape[1]
    group = torch.arange(heads) // (heads // B.shape[1])
    state, x, dt, A, B, C = (t.double() for t in (state, x, dt, A, B, C))
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if softplus:
        dt = F.softplus(dt)
    if dt_limit is not None:
        dt = torch.clamp(dt, *dt_limit)
    b, c = B[:, group], C[:, group]  # [Bt, H, N]
    new = (torch.exp(dt * A)[..., None, None] * state
           + (dt[..., None] * x)[..., None] * b[:, :, None, :])
    y = (new * c[:, :, None, :]).sum(-1)
    return (y if D is None else y + D.double()[:, None] * x), new


def make_inputs(seed, batch, heads, groups, head_dim, d_state, dtype, state_dtype, parts,
                layout):
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dt=dtype, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(dt)

    if layout == "strided":  # x a slice of a wider projection, the state a [.., N, P] view
        x = rand(batch, heads * head_dim + 3)[:, 3:].view(batch, heads, head_dim)
        state = rand(batch, heads, d_state, head_dim, dt=state_dtype).transpose(2, 3)
    else:
        x = rand(batch, heads, head_dim)
        state = rand(batch, heads, head_dim, d_state, dt=state_dtype)
    dt = rand(batch, heads, scale=0.5)
    if "softplus" not in parts:
        dt = dt.abs()
    A = -torch.rand(heads, generator=g) * 2.0 - 0.1
    B, C = rand(batch, groups, d_state), rand(batch, groups, d_state)
    D = rand(heads, dt=torch.float32) if "D" in parts else None
    dt_bias = rand(heads, dt=torch.float32, scale=0.3) if "dt_bias" in parts else None
    return state, x, dt, A, B, C, D, dt_bias


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()


def tolerance(*dtypes: torch.dtype) -> float:
    return max(TOLERANCE[d] for d in dtypes)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.sampled_from([1, 3]),
    heads_groups=st.sampled_from([(1, 1), (2, 1), (4, 2), (3, 3), (8, 1)]),
    head_dim=st.sampled_from([1, 5, 16, 20]),
    d_state=st.sampled_from([1, 3, 16, 24]),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    state_dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    parts=st.sets(st.sampled_from(["D", "dt_bias", "softplus", "clamp"])),
    layout=st.sampled_from(["contiguous", "strided"]),
)
def test_step_matches_eager(seed, batch, heads_groups, head_dim, d_state, dtype,
                            state_dtype, parts, layout):
    heads, groups = heads_groups
    state, *rest = make_inputs(seed, batch, heads, groups, head_dim, d_state, dtype,
                               state_dtype, parts, layout)
    limit = CLAMP if "clamp" in parts else None
    y_ref, new_ref = eager_step(state, *rest, "softplus" in parts, limit)
    before = state.data_ptr()
    y = step_op.ssd_step(state, *rest, dt_softplus="softplus" in parts,
                         **({"dt_limit": limit} if limit else {}))
    assert y.dtype == dtype and y.shape == (batch, heads, head_dim)
    assert state.data_ptr() == before and state.dtype == state_dtype  # in place
    assert rel_err(y, y_ref) <= tolerance(dtype, state_dtype)
    assert rel_err(state, new_ref) <= tolerance(dtype, state_dtype)


def test_nan_in_dt_reaches_its_head_only():
    """NaN in dt: that (batch, head)'s state and y become NaN, as in eager; others not."""
    state, x, dt, A, B, C, D, dt_bias = make_inputs(
        1, 2, 4, 2, 3, 5, torch.float32, torch.float32, {"D"}, "contiguous")
    dt = dt.clone()
    dt[1, 2] = float("nan")
    y_ref, new_ref = eager_step(state, x, dt, A, B, C, D, dt_bias, False, None)
    y = step_op.ssd_step(state, x, dt, A, B, C, D)
    assert torch.equal(torch.isnan(y), torch.isnan(y_ref)) and torch.isnan(y[1, 2]).all()
    assert torch.equal(torch.isnan(state), torch.isnan(new_ref))
    assert torch.isnan(state).sum() == 3 * 5


@pytest.mark.parametrize("bad, message", [
    ({"x": torch.zeros(1, 4, 2, 2)}, "x must be 3-D"),
    ({"dt": torch.zeros(1, 3)}, "dt.shape"),
    ({"A": torch.zeros(2, 3)}, "A.shape"),
    ({"B": torch.zeros(1, 3, 3), "C": torch.zeros(1, 3, 3)}, "must divide heads"),
    ({"C": torch.zeros(1, 1, 2)}, "B.shape"),
    ({"state": torch.zeros(1, 4, 2, 2)}, "state.shape"),
    ({"state": torch.zeros(1, 4, 2, 3, dtype=torch.int32)}, "state.dtype"),
])
def test_step_bad_input_names_the_argument(bad, message):
    args = {"state": torch.zeros(1, 4, 2, 3), "x": torch.zeros(1, 4, 2),
            "dt": torch.zeros(1, 4), "A": torch.zeros(4), "B": torch.zeros(1, 2, 3),
            "C": torch.zeros(1, 2, 3)}
    args.update(bad)
    with pytest.raises(ValueError, match=message):
        step_op.ssd_step(**args)


@pytest.mark.skipif(not has_ptx_backend(), reason="triton has no NVIDIA backend here")
def test_step_kernel_compiles_for_sm90(tmp_path):
    """The compiled step builds for sm_90 at Mamba-2's size (P = 64, N = 128, bf16 x,
    fp32 state), no GPU needed."""
    from ioaware import hardware
    from ioaware.codegen.ssd import step
    from ioaware.codegen.ssd.spec import SSDSpec

    spec = SSDSpec(dtype="bfloat16", head_dim=64, d_state=128, bc_dtype="bfloat16",
                   has_D=True, has_dt_bias=True, dt_softplus=True)
    module = import_compiled(step.render_step(spec, profile=hardware.get_profile("h100")),
                             tmp_path / "ssd_step_sm90.py")
    low = {"x_ptr", "B_ptr", "C_ptr", "y_ptr"}

    def arg_type(name: str) -> str:
        if name.endswith("_ptr"):
            return "*bf16" if name in low else "*fp32"
        return "i32"

    const = {"BLOCK_P": module.STEP_BLOCK_P, "BLOCK_N": module.BLOCK_N, "HAS_D": True,
             "HAS_DT_BIAS": True, "DT_SOFTPLUS": True, "HAS_DT_LIMIT": False,
             "DT_MIN": float("-inf"), "DT_MAX": float("inf")}
    kernel = compile_sm90(module._ssd_step, const, arg_type, num_warps=4)
    assert "st.global" in kernel.asm["ptx"]
