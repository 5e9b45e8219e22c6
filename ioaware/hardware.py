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
import json
import re
from pathlib import Path
from typing import Any

import torch

from ioaware.config import config

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
    "fp64": "float64",
    "double": "float64",
    "fp8": "float8_e4m3fn",
    "e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
}


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Peak rates and sizes of one accelerator (or a CPU socket, see PROFILES["cpu"]).

    peak_flops: datasheet dense rate per dtype name ('float16', 'bfloat16', 'float32',
      'tf32', 'float64', 'float8_e4m3fn', 'float8_e5m2', 'int8'), FLOP/s (int8: OP/s),
      a fused multiply-add counting 2. 'float32' is the plain (non tensor core) rate;
      'tf32' is float32 matmuls with TF32 tensor cores allowed; 'float64' is the FP64
      tensor-core rate cuBLAS uses for DGEMM.
    hbm_bandwidth: datasheet HBM bandwidth, bytes/s (bytes read plus bytes written).
    sram_per_sm: shared memory per SM, bytes; sram_per_block is what one block may use.
    num_sms, l2_bytes, registers_per_sm (32-bit registers), memory_bytes (HBM capacity).
    transcendentals_per_s: special-function unit rate (exp, log, rsqrt, ...), ops/s.
    measured_peak_flops / measured_hbm_bandwidth / measured_l2_bytes: what this team saw
      on such a machine (empty / None where nobody measured); preferred by the model.
    l2_bandwidth: bytes/s L2 can serve to the SMs. Vendors publish none, so it is None
      until measured (`ioaware calibrate`); with None the model prices L2 hits as free,
      which keeps modelled time a floor.
    memory_latency: seconds of one DRAM round trip a kernel waits with nothing else to
      run (a wave of PyTorch's row-per-block softmax: load, two block reductions, store),
      measured by `ioaware calibrate` on a softmax shape of its own; None: not measured,
      and exposed round trips cost nothing.
    kernel_efficiency: generated-kernel family ("selective_scan") -> the fraction of its
      modelled compute time (the pipes' sum) it achieves, measured on a shape of its own
      (`ioaware calibrate`, or the bench run named beside the number); missing: 1.
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
    l2_bandwidth: float | None = None
    memory_latency: float | None = None
    kernel_efficiency: dict[str, float] = dataclasses.field(default_factory=dict, hash=False)
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

    def to_json(self) -> dict[str, Any]:
        """Plain data for a JSON file; `DeviceProfile.from_json` reads it back."""
        return {"format": PROFILE_FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: Any, source: str = "profile") -> DeviceProfile:
        """A profile from `to_json`'s data; a ValueError names `source` and the fault."""
        if not isinstance(data, dict):  # bad file content, not a caller's type mistake
            raise ValueError(  # noqa: TRY004
                f"{source}: expected a JSON object, got {type(data).__name__}"
            )
        if data.get("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise ValueError(f"{source}: format {data['format']!r} is not {PROFILE_FORMAT}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields) - {"format"})
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}; expected {sorted(fields)}")
        required = [n for n, f in fields.items()
                    if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [n for n in required if n not in data]
        if missing:
            raise ValueError(f"{source}: missing fields {missing}")
        values = {n: v for n, v in data.items() if n != "format"}
        for n in ("peak_flops", "measured_peak_flops"):
            rates = values.get(n, {})
            if not isinstance(rates, dict) or not all(
                isinstance(v, (int, float)) and v > 0 for v in rates.values()
            ):
                raise ValueError(f"{source}: {n} must map dtype names to positive FLOP/s")
            values[n] = {dtype_key(k): float(v) for k, v in rates.items()}
        efficiency = values.get("kernel_efficiency", {})
        if not isinstance(efficiency, dict) or not all(
            isinstance(v, (int, float)) and v > 0 for v in efficiency.values()
        ):
            raise ValueError(f"{source}: kernel_efficiency must map kernel names to positive "
                             "fractions")
        latency = values.get("memory_latency")
        if latency is not None and (not isinstance(latency, (int, float)) or latency <= 0):
            raise ValueError(f"{source}: memory_latency={latency!r} must be positive seconds "
                             "or null")
        for n in ("hbm_bandwidth", "sram_per_sm", "num_sms", "l2_bytes", "sram_per_block",
                  "registers_per_sm", "memory_bytes", "transcendentals_per_s"):
            if not isinstance(values[n], (int, float)) or values[n] <= 0:
                raise ValueError(f"{source}: {n}={values[n]!r} must be a positive number")
        return cls(**values)


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
    "float64": 66.9e12,
    "float8_e4m3fn": 1978.9e12,
    "float8_e5m2": 1978.9e12,
    "int8": 1978.9e12,
}

# The selective scan's efficiency on the H100: its bench shape's modelled compute time
# (`cost.ceilings(...)["compute"]` at efficiency 1, tests/unit/test_cost.py checks it)
# over the time `ioaware bench scan` measured there.
SCAN_BENCH_MODELLED_S, SCAN_BENCH_MEASURED_S = 90.6e-6, 197e-6

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
        # `ioaware bench scan` (B=4, Dc=1536, L=2048, N=16, gated, bf16), 2026-11-22,
        # double-buffered forward: 197 us measured against 90.6 us of modelled pipe time
        # (docs/kernels.md, "Register double-buffering").
        kernel_efficiency={"selective_scan": SCAN_BENCH_MODELLED_S / SCAN_BENCH_MEASURED_S},
        note="H100 SXM5 80GB HBM3. Measured on this team's H100, 2026-11-13 and 11-22.",
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
            "float64": 19.5e12,
            "int8": 624e12,
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
            "float64": 0.5e12,
            "int8": 2e12,
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

PROFILE_FORMAT = 1  # version of the saved-profile JSON
_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def profile_dir() -> Path:
    """Where saved profiles live: `config.profile_dir` ($IOAWARE_PROFILE_DIR, else
    ioaware/profiles under the user's config dir, $XDG_CONFIG_HOME or ~/.config)."""
    return config.profile_dir


def _check_name(name: Any) -> str:
    key = str(name).strip().lower() if isinstance(name, str) else ""
    if not _NAME.fullmatch(key):
        raise ValueError(
            f"name={name!r} must be a non-empty string of letters, digits, '_', '-' or '.'"
            " starting with a letter or digit"
        )
    return key


def save_profile(profile: DeviceProfile, name: str) -> Path:
    """Write `profile` as `name` (e.g. what `ioaware calibrate` measured) into
    `profile_dir()`, so `get_profile(name)` and `--device name` find it. Returns the file.

    Built-in names are refused: they would never be found, since built-ins come first.
    """
    if not isinstance(profile, DeviceProfile):
        raise TypeError(f"profile must be a DeviceProfile, got {type(profile).__name__}")
    key = _check_name(name)
    if key in PROFILES:
        raise ValueError(
            f"name={name!r} is a built-in profile; save a calibrated one under another "
            f"name, e.g. {key + '-calibrated'!r}"
        )
    directory = profile_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{key}.json"
    data = dataclasses.replace(profile, name=key).to_json()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)  # readers never see half a file
    return path


def load_profile(path: str | Path) -> DeviceProfile:
    """A profile from a JSON file `save_profile` wrote; a ValueError names what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"path={str(path)!r}: cannot read a profile: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"path={str(path)!r} is not valid JSON: {e}") from None
    return DeviceProfile.from_json(data, source=str(path))


def saved_profile_names() -> list[str]:
    """Names of the profiles saved in `profile_dir()`, sorted."""
    directory = profile_dir()
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.json") if _NAME.fullmatch(p.stem))


def profile_names() -> list[str]:
    """Every name `get_profile` accepts: the built-ins, then the saved ones."""
    return sorted(PROFILES) + [n for n in saved_profile_names() if n not in PROFILES]


# Substrings of torch.cuda.get_device_name() -> profile name, most specific first.
_CUDA_NAME_MATCH = (("h200", "h200"), ("h100", "h100"), ("a100", "a100"))


def profile_name_for(device_name: str) -> str | None:
    """The built-in profile a CUDA device name is ("NVIDIA H100 80GB HBM3" -> "h100")."""
    lowered = device_name.lower()
    for needle, profile_name in _CUDA_NAME_MATCH:
        if needle in lowered:
            return profile_name
    return None


def _cuda_profile_name(index: int | None = None) -> str | None:
    """The built-in profile of CUDA device `index` (the current one for None), if any."""
    if not torch.cuda.is_available():
        return None
    return profile_name_for(torch.cuda.get_device_name(index))


def get_profile(name: str | DeviceProfile | None = None) -> DeviceProfile:
    """The profile called `name` (case-insensitive), or the current device's for None.

    None picks the profile whose name appears in the current CUDA device's name
    ("NVIDIA H100 80GB HBM3" -> "h100"); with no CUDA device, or one with no profile,
    it falls back to `ioaware.config.config.default_device`. A profile passes through.
    Built-in names are looked up first, then profiles saved with `save_profile`.
    """
    if isinstance(name, DeviceProfile):
        return name
    argument = "name"
    if name is None:
        name = _cuda_profile_name()
        if name is None:
            argument, name = "config.default_device", config.default_device
    key = str(name).strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    if _NAME.fullmatch(key) and (profile_dir() / f"{key}.json").is_file():
        return load_profile(profile_dir() / f"{key}.json")
    saved = saved_profile_names()
    raise ValueError(
        f"{argument}={name!r} is not a known device profile; "
        f"valid names: {sorted(PROFILES)}" + (f", saved: {saved}" if saved else "")
    )


def device_profile(device: torch.device | str) -> DeviceProfile:
    """The profile of the device tensors live on: a CUDA device's by its name (cuda:1
    may differ from the current device), anything else as `get_profile(None)`. The
    backend prices a graph on it and the codegen sizes its kernels' tiles for it."""
    device = torch.device(device)
    name = _cuda_profile_name(device.index) if device.type == "cuda" else None
    return get_profile(name)
