"""GPU tier: the cost model against the clock on the present GPU.

Each op is traced with make_fx, priced node by node with ioaware.cost on the profile
that matches this GPU, then timed with CUDA events (median of repeats, after warm-up).
Two promises are checked:
- a floor is a floor: no op runs faster than 0.9x its modelled time (the 10% is clock
  and measurement noise; a profile whose peaks are too low fails here);
- for plain eager ops the floor is tight: matmul, softmax and elementwise run within
  2x of it (issue 5's acceptance), so their ceilings are the ones that bind.
Skipped without a CUDA GPU, and on a GPU no built-in profile names.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.fx.experimental.proxy_tensor import make_fx

from ioaware import hardware
from ioaware.cost import bound, graph_cost, modelled_time

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def profile() -> hardware.DeviceProfile:
    p = hardware.get_profile(None)
    if p.name not in torch.cuda.get_device_name().lower():
        pytest.skip(f"no built-in profile for {torch.cuda.get_device_name()}")
    return p


def measured_seconds(fn, *args, repeats: int = 10) -> float:
    for _ in range(3):
        fn(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def modelled(fn, *args, dtype, profile) -> tuple[float, str]:
    priced = graph_cost(make_fx(fn, pre_dispatch=True)(*args))
    assert priced.num_unpriced == 0, priced.unpriced_ops()
    return (modelled_time(priced.total, profile, dtype),
            bound(priced.total, profile, dtype))


def rand(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", dtype=dtype)


# name, function, argument builder, dtype priced at, expected bound
EAGER = [
    ("matmul 8192^3 bf16", torch.mm, lambda: (rand(8192, 8192), rand(8192, 8192)),
     "bfloat16", "compute"),
    ("add 2^27 fp32", torch.add,
     lambda: (rand(2**27, dtype=torch.float32), rand(2**27, dtype=torch.float32)),
     "float32", "memory"),
    ("softmax 8192x16384 bf16", lambda x: torch.softmax(x, -1), lambda: (rand(8192, 16384),),
     "bfloat16", "memory"),
    ("gelu 2^28 bf16", F.gelu, lambda: (rand(2**28),), "bfloat16", "memory"),
]


@pytest.mark.parametrize("name, fn, build, dtype, expected", EAGER, ids=[e[0] for e in EAGER])
def test_eager_ops_run_within_2x_of_their_floor(profile, name, fn, build, dtype, expected):
    args = build()
    floor, which = modelled(fn, *args, dtype=dtype, profile=profile)
    seconds = measured_seconds(fn, *args)
    assert which == expected
    assert seconds >= 0.9 * floor, f"{name}: {seconds:.3g} s beats the floor {floor:.3g} s"
    assert seconds <= 2 * floor, f"{name}: {seconds:.3g} s is over 2x the floor {floor:.3g} s"


@pytest.mark.parametrize("causal", [False, True])
def test_fused_attention_never_beats_its_floor_and_is_compute_bound(profile, causal):
    # PyTorch's own flash kernel, priced as flash_attention_cost: K/V re-reads hit L2,
    # so the floor is the matmuls', not HBM's
    q, k, v = (rand(4, 16, 4096, 128) for _ in range(3))

    def attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    floor, which = modelled(attention, q, k, v, dtype="bfloat16", profile=profile)
    seconds = measured_seconds(attention, q, k, v)
    assert which == "compute"
    assert seconds >= 0.9 * floor, f"{seconds:.3g} s beats the floor {floor:.3g} s"
