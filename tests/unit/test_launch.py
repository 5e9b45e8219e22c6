"""codegen/launch: the key under which a kernel's binary is reused is at least as fine as
Triton's specialisation, so a reused binary is the one Triton itself would pick."""

from __future__ import annotations

import pytest
import torch

from ioaware.codegen import launch


def test_key_separates_what_triton_specialises_on():
    buf = torch.zeros(64, dtype=torch.bfloat16)
    aligned, shifted = buf[:16], buf[1:17]  # 2 bytes into a 16-byte aligned storage
    assert launch._arg_key(aligned) != launch._arg_key(shifted)
    assert launch._arg_key(aligned) != launch._arg_key(aligned.float())
    assert launch._arg_key(aligned) == launch._arg_key(buf[8:24])  # 16 bytes in: aligned
    # ints: the constant 1, divisibility by 16, the i32 / i64 / u64 widths
    keys = {launch._arg_key(x) for x in (1, 16, 17, 2**31, 2**63)}
    assert len(keys) == 5
    assert launch._arg_key(32) == launch._arg_key(4096)
    assert launch._arg_key(True) != launch._arg_key(False) != launch._arg_key(None)
    assert launch._arg_key(0.5) == launch._arg_key(2.0)  # floats are not specialised
    with pytest.raises(TypeError):
        launch._arg_key(object())  # unknown kinds take Triton's own path


def test_tail_names_the_keyword_parameters_in_signature_order():
    class Kernel:
        arg_names = ("X", "n", "BLOCK_M", "BLOCK_N")

    kw = {"BLOCK_N": 64, "BLOCK_M": 128, "num_warps": 4}
    assert launch._constexpr_tail(Kernel(), 2, kw) == ("BLOCK_M", "BLOCK_N")
    assert launch._constexpr_tail(Kernel(), 4, {}) == ()
    assert launch._constexpr_tail(Kernel(), 2, {"BLOCK_M": 128}) is None  # a default


def test_hooks_count_only_when_something_listens():
    class Chain:
        def __init__(self, calls):
            self.calls = calls

    assert not launch._hooked(None)
    assert not launch._hooked(Chain([]))
    assert launch._hooked(Chain([print]))
    assert launch._hooked(print)


KERNEL_SOURCE = '''
import triton
import triton.language as tl


@triton.jit
def kernel(X, n, CPG: tl.constexpr, BLOCK: tl.constexpr):
    pass
'''


def test_constexprs_given_by_position_are_keyed_by_value(tmp_path, monkeypatch):
    # A constexpr passed positionally (the scan kernels' channels per group) compiles a
    # binary per value: 2 and 4 must not share one, though _arg_key cannot tell them.
    (tmp_path / "kernel_with_constexpr.py").write_text(KERNEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from kernel_with_constexpr import kernel

    x = torch.zeros(16)
    assert launch._arg_key(2) == launch._arg_key(4)
    two = launch._launch_key(kernel, (x, 8, 2), {"BLOCK": 16})
    four = launch._launch_key(kernel, (x, 8, 4), {"BLOCK": 16})
    assert two != four
    assert two == launch._launch_key(kernel, (x, 24, 2), {"BLOCK": 16})  # n: not constexpr
