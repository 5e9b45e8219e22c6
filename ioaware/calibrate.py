"""`ioaware calibrate`: measure the GPU present and save a device profile for `--device`.

What the cost model needs from a device is a few ceilings, and a datasheet overstates
them (no kernel reaches the quoted peak), so this measures them with plain torch ops:

    dense matmul rate per dtype   C = A @ B, n x n: 2·n³ FLOPs / median time
                                  (bf16, fp16, fp32 with TF32 allowed, plain fp32)
    device copy bandwidth         dst.copy_(src) of 1 GiB: 2·bytes (read + write) / time
    L2 bandwidth                  the same copy on a buffer a quarter of L2's size
    memory latency                PyTorch's softmax over rows of 8192 bf16, one CTA a
                                  row (SOFTMAX_SHAPE): (time - bytes / copy bandwidth)
                                  / the waves of rows `cost.softmax_row_waves` counts
    selective-scan efficiency     ioaware's scan at SCAN_SHAPE: the cost model's pipe
                                  time over the measured time (`kernel_efficiency`)

The last two are shapes of their own, not the ones docs/cost-model.md validates against
(softmax 65536 x 4096, scan 8 x 2048 x 2048 x 16), so the validation stays a test.

Times are CUDA events around one op after warm-up, the median of the repeats. SM count,
shared memory per SM and per block, L2 size, registers and memory come from the device
properties. The datasheet fields come from the built-in profile of the same GPU where
there is one (the measured numbers are kept beside them and preferred by the model);
otherwise the measured numbers stand in for the datasheet's.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ioaware import hardware
from ioaware.tables import format_bytes

# (dtype key, torch dtype, allow TF32, n). 8192³ keeps the tensor cores busy long enough
# to time (about 1.4 ms in bf16 on an H100); plain fp32 is 15x slower, so smaller.
MATMULS = (
    ("bfloat16", torch.bfloat16, False, 8192),
    ("float16", torch.float16, False, 8192),
    ("tf32", torch.float32, True, 8192),
    ("float32", torch.float32, False, 4096),
)
COPY_BYTES = 2**30
# (rows, cols) bf16: 16 KB rows, one 1024-thread CTA each, two per SM on sm80/sm90.
SOFTMAX_SHAPE = (16384, 8192)
# (batch, channels, length, d_state), bf16, softplus on, no D, z, bias. The scan is
# latency-bound: its efficiency grows with the warps resident per SM until about 6 (H100,
# 2026-11-22: 0.13 at 2 x 1024 channels, ~2 warps per SM; 0.46 at 4 x 1536, ~6; 0.43 at
# 8 x 2048, ~16), so it is measured where the GPU is full (4 x 4096 channels: ~16 warps
# per SM), a shape of its own; shapes with fewer programs run slower than modelled.
SCAN_SHAPE = (4, 4096, 1024, 16)
WARMUP, REPEATS = 3, 10


class CalibrationError(Exception):
    """Calibration cannot run here; the message says why."""


def time_op(op: Callable[[], Any], *, warmup: int = WARMUP, repeats: int = REPEATS) -> float:
    """Median seconds of `op()` on the current CUDA stream, timed with CUDA events."""
    for _ in range(warmup):
        op()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        op()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def matmul_rate(dtype: torch.dtype, n: int, allow_tf32: bool) -> float:
    """FLOP/s of an n x n x n matmul (2·n³ FLOPs, a fused multiply-add counting 2)."""
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    try:
        seconds = time_op(lambda: torch.matmul(a, b))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return 2 * n**3 / seconds


def copy_bandwidth(nbytes: int, back_to_back: int = 1) -> float:
    """Bytes/s of a device-to-device copy of `nbytes`, counting the read and the write.

    back_to_back copies are timed as one op: a small (L2-resident) copy takes a few µs,
    the same order as a launch, so timing each alone measures the launch, not L2."""
    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)

    def copies() -> None:
        for _ in range(back_to_back):
            dst.copy_(src)

    seconds = time_op(copies, repeats=max(REPEATS, 20))
    return 2 * src.nbytes * back_to_back / seconds


def memory_latency(bandwidth: float, num_sms: int) -> float | None:
    """Seconds of the round trip each wave of PyTorch's row-per-CTA softmax waits
    (`cost.softmax_row_waves`), from SOFTMAX_SHAPE: what the measured time has over its
    bytes at `bandwidth`, per wave; None if it has nothing over (no exposed latency)."""
    from ioaware import cost

    rows, cols = SOFTMAX_SHAPE
    x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
    seconds = time_op(lambda: torch.softmax(x, dim=-1))
    waves = cost.softmax_row_waves(rows, cols, 2).xreplace({cost.NUM_SMS: num_sms})
    excess = seconds - 2 * x.nbytes / bandwidth
    return excess / int(waves) if excess > 0 and int(waves) > 0 else None


def scan_efficiency(profile: hardware.DeviceProfile) -> float | None:
    """The selective scan's achieved fraction of its modelled pipe time at SCAN_SHAPE
    (`cost.ceilings(...)["compute"]` with no efficiency, over the measured time);
    None where the scan ops are not built."""
    from ioaware import cost

    try:
        from ioaware.codegen.scan import op as scan_ops  # noqa: F401  (registers the scan ops)
        from ioaware.codegen.scan.price import selective_scan_cost
    except ImportError:
        return None
    bt, dc, length, n = SCAN_SHAPE
    u, delta = (torch.randn(bt, dc, length, device="cuda", dtype=torch.bfloat16)
                for _ in range(2))
    a = -torch.rand(dc, n, device="cuda")
    b, c = (torch.randn(bt, 1, length, n, device="cuda", dtype=torch.bfloat16)
            for _ in range(2))
    seconds = time_op(lambda: torch.ops.ioaware.selective_scan(
        u, delta, a, b, c, None, None, None, True, None))
    priced = selective_scan_cost(bt, dc, length, n, 2, has_D=False, has_z=False,
                                 delta_softplus=True)
    plain = dataclasses.replace(profile, kernel_efficiency={})
    return cost.ceilings(priced, plain, "bfloat16")["compute"] / seconds


def _property(props: Any, *names: str, default: int = 0) -> int:
    """The first of `names` the device properties have (their names vary across torch)."""
    for name in names:
        value = getattr(props, name, None)
        if value:
            return int(value)
    return default


def default_name(device_name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "nvidia-h100-80gb-hbm3-calibrated"."""
    words = "".join(c if c.isalnum() else "-" for c in device_name.lower()).split("-")
    return "-".join(w for w in words if w) + "-calibrated"


def measure_profile(name: str, progress: Callable[[str], None] = lambda _: None
                    ) -> hardware.DeviceProfile:
    """A DeviceProfile for CUDA device 0 with its measured ceilings."""
    if not torch.cuda.is_available():
        raise CalibrationError("needs a CUDA GPU (torch.cuda.is_available() is False)")
    props = torch.cuda.get_device_properties(0)
    rates = {}
    for key, dtype, allow_tf32, n in MATMULS:
        progress(f"matmul {key} {n}x{n}x{n}")
        rates[key] = matmul_rate(dtype, n, allow_tf32)
    progress(f"copy {format_bytes(COPY_BYTES)}")
    bandwidth = copy_bandwidth(COPY_BYTES)
    l2_bytes = _property(props, "L2_cache_size", "l2_cache_size")
    l2_bandwidth = None
    if l2_bytes:
        progress(f"copy {format_bytes(l2_bytes // 4)} (L2-resident)")
        l2_bandwidth = copy_bandwidth(l2_bytes // 4, back_to_back=50)
    sram_per_sm = _property(props, "shared_memory_per_multiprocessor",
                            "max_shared_memory_per_multiprocessor", default=0)
    progress(f"softmax {SOFTMAX_SHAPE[0]}x{SOFTMAX_SHAPE[1]} (memory latency)")
    latency = memory_latency(bandwidth, props.multi_processor_count)
    sram_per_block = _property(props, "shared_memory_per_block_optin",
                               "shared_memory_per_block", default=sram_per_sm)
    known_name = hardware.profile_name_for(props.name)
    known = None if known_name is None else hardware.PROFILES[known_name]
    note = f"{props.name}, calibrated by `ioaware calibrate`"
    base = known or hardware.DeviceProfile(
        name=name, peak_flops=dict(rates), hbm_bandwidth=bandwidth,
        sram_per_sm=sram_per_sm or sram_per_block, num_sms=props.multi_processor_count,
        l2_bytes=l2_bytes or 1, registers_per_sm=_property(
            props, "regs_per_multiprocessor", default=65536),
        sram_per_block=sram_per_block or sram_per_sm, memory_bytes=props.total_memory,
        # No measurement of the special-function units: 16 per SM per clock at 1.5 GHz,
        # the order of every recent NVIDIA part.
        transcendentals_per_s=props.multi_processor_count * 16 * 1.5e9,
    )
    measured = dataclasses.replace(
        base, name=name,
        num_sms=props.multi_processor_count,
        sram_per_sm=sram_per_sm or base.sram_per_sm,
        sram_per_block=sram_per_block or base.sram_per_block,
        memory_bytes=props.total_memory,
        measured_peak_flops=rates, measured_hbm_bandwidth=bandwidth,
        measured_l2_bytes=l2_bytes or None, l2_bandwidth=l2_bandwidth,
        memory_latency=latency,
        note=note + (f"; datasheet values of {known.name}" if known else ""),
    )
    progress(f"selective scan {'x'.join(map(str, SCAN_SHAPE))} (efficiency)")
    efficiency = scan_efficiency(measured)
    if efficiency is None:
        return measured
    return dataclasses.replace(measured, kernel_efficiency={
        **measured.kernel_efficiency, "selective_scan": efficiency})


def calibrate(name: str | None = None, progress: Callable[[str], None] = lambda _: None
              ) -> tuple[hardware.DeviceProfile, Path]:
    """Measure, then save with `hardware.save_profile`; (profile, path of the saved file)."""
    if not torch.cuda.is_available():
        raise CalibrationError("needs a CUDA GPU (torch.cuda.is_available() is False); "
                               "on a CPU use the built-in 'cpu' profile")
    name = name or default_name(torch.cuda.get_device_name(0))
    try:
        profile = measure_profile(name, progress)
        path = hardware.save_profile(profile, name)
    except ValueError as error:  # a bad or built-in --name
        raise CalibrationError(f"--name: {error}") from None
    return hardware.get_profile(name), path


def describe(profile: hardware.DeviceProfile) -> str:
    """The measured ceilings beside the datasheet's, one per line."""
    lines = [f"{profile.name}: {profile.note}"]
    for key, rate in sorted(profile.measured_peak_flops.items()):
        sheet = profile.peak_flops.get(key)
        vs = f" (datasheet {sheet / 1e12:.1f}, {rate / sheet:.0%})" if sheet else ""
        lines.append(f"  matmul {key:9s} {rate / 1e12:8.1f} TFLOP/s{vs}")
    if profile.measured_hbm_bandwidth:
        lines.append(f"  copy bandwidth   {profile.measured_hbm_bandwidth / 1e12:8.2f} TB/s "
                     f"(datasheet {profile.hbm_bandwidth / 1e12:.2f})")
    if profile.l2_bandwidth:
        lines.append(f"  L2 bandwidth     {profile.l2_bandwidth / 1e12:8.2f} TB/s")
    if profile.memory_latency:
        lines.append(f"  memory latency   {profile.memory_latency * 1e6:8.2f} µs "
                     "(per wave of a row-per-CTA softmax)")
    for kernel, fraction in sorted(profile.kernel_efficiency.items()):
        lines.append(f"  {kernel} efficiency {fraction:.3f} of its modelled pipe time")
    lines.append(f"  {profile.num_sms} SMs, {format_bytes(profile.sram_per_sm)} shared memory "
                 f"per SM, {format_bytes(profile.l2)} L2, "
                 f"{format_bytes(profile.memory_bytes)} memory")
    return "\n".join(lines) + "\n"
