"""Device profiles: the peak rates and memory sizes the cost model prices against.

Each profile keeps the vendor's datasheet numbers and, where this team measured them on
the machines it uses, the measured ceilings beside them. The cost model uses the
measured ceiling where one is known (`DeviceProfile.peak_flops_for`,
`DeviceProfile.bandwidth`), because a floor nobody can reach makes every kernel look
worse than it is. Sources and dates of every number: docs/cost-model.md.

Units: FLOP/s, bytes/s, bytes; registers are counted as 32-bit registers.
"""

from __future__ import annotations

import dataclasses

import torch

KB = 1024
MB = 1000**2  # L2 sizes are quoted by vendors and by PyTorch in decimal megabytes
GB = 1000**3

# Aliases the CLI and users write for the dtype keys of `peak_flops`.
_DTYPE_ALIASES = {
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float": "float32",
}


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Peak rates and sizes of one accelerator (or a CPU socket, see PROFILES["cpu"]).

    peak_flops: datasheet dense rate per dtype name ('float16', 'bfloat16', 'float32',
      'tf32'), FLOP/s, a fused multiply-add counting 2. 'float32' is the plain (non
      tensor core) rate; 'tf32' is float32 matmuls with TF32 tensor cores allowed.
    hbm_bandwidth: datasheet HBM bandwidth, bytes/s (bytes read plus bytes written).
    sram_per_sm: shared memory per SM, bytes; sram_per_block is what one block may use.
    num_sms, l2_bytes, registers_per_sm (32-bit registers), memory_bytes (HBM capacity).
    transcendentals_per_s: special-function unit rate (exp, log, rsqrt, ...), ops/s.
    measured_peak_flops / measured_hbm_bandwidth / measured_l2_bytes: what this team saw
      on such a machine (empty / None where nobody measured); preferred by the model.
    """

    name: str
    peak_flops: dict[str, float] = dataclasses.field(hash=False)
    hbm_bandwidth: float
    sram_per_sm: int
    num_sms: int
    l2_bytes: int
    registers_per_sm: int
    sram_per_block: int
    memory_bytes: int
    transcendentals_per_s: float
    measured_peak_flops: dict[str, float] = dataclasses.field(default_factory=dict, hash=False)
    measured_hbm_bandwidth: float | None = None
    measured_l2_bytes: int | None = None
    note: str = ""

    def peak_flops_for(self, dtype: str | torch.dtype) -> float:
        """FLOP/s the cost model uses for `dtype`: measured if known, else the datasheet's."""
        key = dtype_key(dtype)
        if key in self.measured_peak_flops:
            return self.measured_peak_flops[key]
        if key not in self.peak_flops:
            raise ValueError(
                f"dtype={dtype!r} has no peak rate on {self.name}; "
                f"known: {sorted(self.peak_flops)}"
            )
        return self.peak_flops[key]

    @property
    def bandwidth(self) -> float:
        """Bytes/s the cost model uses: the measured copy bandwidth if known."""
        return self.measured_hbm_bandwidth or self.hbm_bandwidth

    @property
    def l2(self) -> int:
        """L2 bytes as the device reports it where measured, else the datasheet's."""
        return self.measured_l2_bytes or self.l2_bytes


def dtype_key(dtype: str | torch.dtype) -> str:
    """The `peak_flops` key for a torch dtype or a dtype name ('bf16' and 'torch.x' too)."""
    if isinstance(dtype, torch.dtype):
        name = str(dtype).removeprefix("torch.")
    else:
        name = str(dtype).removeprefix("torch.").lower()
    return _DTYPE_ALIASES.get(name, name)


# Hopper SXM: 132 SMs at the 1830 MHz the datasheet rates are quoted at; the SFU rate is
# 16 special-function ops per SM per clock (the FlashAttention-3 paper's 3.9 T/s).
_HOPPER_PEAKS = {
    "float16": 989.4e12,
    "bfloat16": 989.4e12,
    "tf32": 494.7e12,
    "float32": 66.9e12,
}

PROFILES: dict[str, DeviceProfile] = {
    "h100": DeviceProfile(
        name="h100",
        peak_flops=dict(_HOPPER_PEAKS),
        hbm_bandwidth=3.35e12,
        sram_per_sm=228 * KB,
        sram_per_block=227 * KB,
        num_sms=132,
        l2_bytes=50 * MB,
        registers_per_sm=65536,
        memory_bytes=80 * GB,
        transcendentals_per_s=3.9e12,
        # 8192^3 bf16 torch.matmul on random data (798 seen once; the team quotes ~790).
        # fp16 runs on the same tensor-core path, so it gets the same measured ceiling.
        measured_peak_flops={"bfloat16": 790e12, "float16": 790e12},
        measured_hbm_bandwidth=3.0e12,  # device-to-device copy, read + write bytes
        note="H100 SXM5 80GB HBM3. Measured on this team's H100, 2026-11-13.",
    ),
    "h200": DeviceProfile(
        name="h200",
        peak_flops=dict(_HOPPER_PEAKS),
        hbm_bandwidth=4.8e12,
        sram_per_sm=228 * KB,
        sram_per_block=227 * KB,
        num_sms=132,
        l2_bytes=50 * MB,  # the same GH100 die as the H100 SXM; PyTorch reports 60 MB
        registers_per_sm=65536,
        memory_bytes=141 * GB,
        transcendentals_per_s=3.9e12,
        measured_peak_flops={"bfloat16": 788e12, "float16": 788e12},
        measured_hbm_bandwidth=4.3e12,
        measured_l2_bytes=60 * MB,
        note="H200 SXM 141GB HBM3e. Measured on this team's H200s, 2026-10-28 and 11-04.",
    ),
    "a100": DeviceProfile(
        name="a100",
        peak_flops={
            "float16": 312e12,
            "bfloat16": 312e12,
            "tf32": 156e12,
            "float32": 19.5e12,
        },
        hbm_bandwidth=2.039e12,
        sram_per_sm=164 * KB,
        sram_per_block=163 * KB,
        num_sms=108,
        l2_bytes=40 * MB,
        registers_per_sm=65536,
        memory_bytes=80 * GB,
        transcendentals_per_s=108 * 16 * 1.41e9,  # 16 SFU ops/SM/clock at 1410 MHz
        note="A100 SXM4 80GB, datasheet only: nobody here has measured one.",
    ),
    # Not a datasheet: an order-of-magnitude stand-in for a 16-core x86 server socket
    # (AVX-512 FMA, DDR5) so the model gives sane answers when a graph is priced on a
    # laptop or in CI. An "SM" is a core, its "SRAM" the per-core L2, its "L2" the L3.
    "cpu": DeviceProfile(
        name="cpu",
        peak_flops={
            "float16": 1e12,
            "bfloat16": 1e12,
            "tf32": 1e12,
            "float32": 1e12,
        },
        hbm_bandwidth=100e9,
        sram_per_sm=1024 * KB,
        sram_per_block=1024 * KB,
        num_sms=16,
        l2_bytes=32 * 1024 * KB,
        registers_per_sm=32 * 16,  # 32 zmm registers of 16 fp32 lanes
        memory_bytes=128 * GB,
        transcendentals_per_s=0.1e12,
        note="Order-of-magnitude values for a 16-core server CPU, not a measured part.",
    ),
}

# Substrings of torch.cuda.get_device_name() -> profile name, most specific first.
_CUDA_NAME_MATCH = (("h200", "h200"), ("h100", "h100"), ("a100", "a100"))


def _current_cuda_profile_name() -> str | None:
    if not torch.cuda.is_available():
        return None
    device_name = torch.cuda.get_device_name().lower()
    for needle, profile_name in _CUDA_NAME_MATCH:
        if needle in device_name:
            return profile_name
    return None


def get_profile(name: str | DeviceProfile | None = None) -> DeviceProfile:
    """The profile called `name` (case-insensitive), or the current device's for None.

    None picks the profile whose name appears in the current CUDA device's name
    ("NVIDIA H100 80GB HBM3" -> "h100"); with no CUDA device, or one with no profile,
    it falls back to `ioaware.config.config.default_device`. A profile passes through.
    """
    if isinstance(name, DeviceProfile):
        return name
    argument = "name"
    if name is None:
        from ioaware.config import config

        name = _current_cuda_profile_name()
        if name is None:
            argument, name = "config.default_device", config.default_device
    key = str(name).strip().lower()
    if key not in PROFILES:
        raise ValueError(
            f"{argument}={name!r} is not a known device profile; "
            f"valid names: {sorted(PROFILES)}"
        )
    return PROFILES[key]
