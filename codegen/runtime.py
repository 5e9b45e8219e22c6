"""Where a kernel family's op runs, decided per call from the tensors' device.

    CUDA tensor                     -> compiled Triton kernels ("triton")
    CPU tensor, config.interpret    -> the same kernels under Triton's interpreter
                                       ("triton-interpret")
    anything else                   -> the family's torch reference ("reference")

Every family's op asks the same questions here (how it runs, which kernel module, on
which device), so a new family dispatches as the others do. The module is rendered for
the device profile of the tensors' device, the one the backend priced the rewrite on.
"""

from __future__ import annotations

import contextlib
from types import ModuleType

import torch

from ioaware.config import config
from ioaware.hardware import device_profile

from .cache import INTERPRET_DEVICE, Spec, cached_module, device_tag, load_kernel_module


def backend_name(device: torch.device | str) -> str:
    """How the ops run on `device` now: "triton", "triton-interpret" or "reference"."""
    if not isinstance(device, torch.device):  # a tensor's .device is one already
        device = torch.device(device)
    if device.type == "cuda":
        return "triton"
    if device.type == "cpu" and config.interpret:
        return "triton-interpret"
    return "reference"


def kernel_device(device: torch.device) -> str:
    """Cache device tag for a tensor on `device` (callers have ruled out "reference")."""
    return device_tag(device) if device.type == "cuda" else INTERPRET_DEVICE


def kernel_module(kind: str, spec: Spec, device: torch.device) -> ModuleType:
    """The kernel module `kind` for `spec` that runs on `device` (not "reference"),
    rendered for the profile of that device (`hardware.device_profile`, the one the
    backend prices against) when this process has not loaded it yet."""
    tag = kernel_device(device)
    module = cached_module(kind, spec, tag)
    if module is None:
        module = load_kernel_module(kind, spec, tag, device_profile(device))
    return module


def device_context(device: torch.device):
    """torch.cuda.device(device) where it is not the current device already; else a null
    context (entering and leaving one costs host time on every call)."""
    if device.type != "cuda" or device.index in (None, torch.cuda.current_device()):
        return contextlib.nullcontext()
    return torch.cuda.device(device)
