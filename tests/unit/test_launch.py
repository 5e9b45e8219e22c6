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


def test_exact_key_changes_with_any_size_stride_type_or_alignment():
    buf = torch.zeros(64, 64)
    x = buf[:8, :16]
    key = launch._exact_key(0, (x, *x.shape, *x.stride()), {"BLOCK": 16})
    assert key == launch._exact_key(0, (buf[8:16, :16], 8, 16, 64, 1), {"BLOCK": 16})
    others = [
        launch._exact_key(0, (x, 8, 16, 16, 1), {"BLOCK": 16}),  # another stride
        launch._exact_key(0, (x, 9, 16, 64, 1), {"BLOCK": 16}),  # another size
        launch._exact_key(0, (buf[:8, 1:17], 8, 16, 64, 1), {"BLOCK": 16}),  # 4 bytes in
        launch._exact_key(0, (x.double(), 8, 16, 64, 1), {"BLOCK": 16}),  # dtype
        launch._exact_key(0, (x, 8, 16, 64, True), {"BLOCK": 16}),  # True == 1, not a bool
        launch._exact_key(0, (x, 8, 16, 64, 1), {"BLOCK": 32}),  # a keyword
        launch._exact_key(1, (x, 8, 16, 64, 1), {"BLOCK": 16}),  # the device
    ]
    assert len({key, *others}) == 1 + len(others)


def test_equal_exact_keys_mean_equal_specialisation_keys(tmp_path, monkeypatch):
    (tmp_path / "kernel_with_constexpr.py").write_text(KERNEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from kernel_with_constexpr import kernel

    buf = torch.zeros(256)
    calls = [(buf[i:], n, cpg) for i in (0, 1, 4, 8) for n in (1, 16, 17, 2**31)
             for cpg in (1, 2, 4)]
    for a in calls:
        for b in calls:
            if launch._exact_key(0, a, {"BLOCK": 16}) == launch._exact_key(0, b, {"BLOCK": 16}):
                assert (launch._launch_key(kernel, a, {"BLOCK": 16})
                        == launch._launch_key(kernel, b, {"BLOCK": 16}))


def test_a_call_site_reuses_its_binary_until_a_size_or_stride_changes(tmp_path, monkeypatch):
    """The host-side cache only: no GPU here, so the device and the binary are stand-ins
    (the binary records its launches); the first call of a specialisation compiles
    through Triton on a GPU, here it is filed beforehand under the key Triton's path
    would have filed it."""
    (tmp_path / "kernel_with_constexpr.py").write_text(KERNEL_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from kernel_with_constexpr import kernel

    class Device:
        @staticmethod
        def get_current_device():
            return 0

        @staticmethod
        def get_current_stream(device):
            return 7

    runs = []

    class Binary:
        function = packed_metadata = None

        @staticmethod
        def run(*args):
            runs.append(args)

    monkeypatch.setattr(launch, "driver", type("Driver", (), {"active": Device}))
    keys = []
    real_launch_key = launch._launch_key

    def launch_key(*args):
        keys.append(args[1])
        return real_launch_key(*args)

    monkeypatch.setattr(launch, "_launch_key", launch_key)
    x = torch.zeros(64)
    for n in (8, 24):  # both specialise alike (neither 1 nor a multiple of 16)
        kernel.__dict__.setdefault(launch._ATTR, {})[
            (0, real_launch_key(kernel, (x, n, 2), {"BLOCK": 16}))] = (Binary, ("BLOCK",))
    for _ in range(3):
        launch.launch(kernel, (4,), x, 8, 2, BLOCK=16)
    assert len(keys) == 1  # planned once, then the exact key finds the binary
    assert runs[-1] == (4, 1, 1, 7, None, None, None, None, None, x, 8, 2, 16)
    launch.launch(kernel, (4,), x, 24, 2, BLOCK=16)  # a new size: planned again
    launch.launch(kernel, (4,), x, 24, 2, BLOCK=16)
    assert len(keys) == 2 and len(runs) == 5
    kernel.__dict__.pop(launch._ATTR)
    kernel.__dict__.pop(launch._EXACT)
