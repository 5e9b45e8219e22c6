"""The ops' CUDA path on CPU tensors, for host-side checks and profiles without a GPU.

Kernel modules are rendered for an H100 (under their own device `tag`, so they never mix
with real cache entries), every compiled-binary lookup finds a binary whose launcher is
`run` (a binary cannot run without a GPU), and the driver reports device 0, stream 0.
Used by tests/unit/test_launch_plan.py (run records the launches) and
scripts/profile_host_path.py (run does nothing)."""

from __future__ import annotations

from collections.abc import Callable

from ioaware import hardware
from ioaware.codegen import cache, launch, runtime
from ioaware.codegen.attention import op as attention_op
from ioaware.codegen.decode import op as decode_op
from ioaware.codegen.scan import op as scan_op
from ioaware.codegen.ssd import step_op as ssd_step_op


class _Driver:
    class active:
        @staticmethod
        def get_current_device():
            return 0

        @staticmethod
        def get_current_stream(device):
            return 0


def patch_to_cuda_path(set_attr: Callable, tag: str, run: Callable) -> None:
    """Send the attention, scan, decode and SSD step ops down their CUDA path; `set_attr` is
    `setattr` or pytest's `monkeypatch.setattr` (undone after the test)."""
    profile = hardware.get_profile("h100")

    class Binary:  # what `launch` calls for a cached binary
        function = None
        packed_metadata = None

    Binary.run = staticmethod(run)

    class Binaries(dict):
        """Every key has the binary (and no keyword tail: a real one is a few names)."""

        def get(self, key, default=None):
            return (Binary, ())

    def kernel_module(kind, spec, device):
        module = cache.cached_module(kind, spec, tag)
        if module is None:
            module = cache.load_kernel_module(kind, spec, tag, profile)
            for value in vars(module).values():
                if isinstance(value, launch.JITFunction):
                    value.__dict__["_ioaware_binaries"] = Binaries()
        return module

    for module in (runtime, attention_op, scan_op, decode_op, ssd_step_op):
        if hasattr(module, "kernel_module"):
            set_attr(module, "kernel_module", kernel_module)
        set_attr(module, "backend_name", lambda device: "triton")
    set_attr(decode_op, "device_profile", lambda device: profile)  # tiles, splits as on an H100
    set_attr(launch, "driver", _Driver)
