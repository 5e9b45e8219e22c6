"""GPU diagnostics for two open questions (run on a CUDA host; prints short tables).

1. Scan gradients: the compiled selective/linear scan properties pass under the
   interpreter but failed on CUDA. Compare each gradient with eager for the op called
   directly and for the ioaware rewrite with the rest of the graph run as fx, through
   aot_eager, and through Inductor, at a few lengths, to place the fault.
2. Sliding-window attention: the kernel called with a hand-written spec ran at 214
   TFLOP/s, ioaware.compile of the plain spelling at 95. Profile both forwards and list
   the CUDA kernels each launches.
3. SDPA's output and dq for query rows whose keys are all masked, per backend.

    PYTHONPATH=. python3 scripts/diag_gpu.py [scan] [attention] [sdpa]
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "tests/gpu")
sys.path.insert(0, "tests")

from ioaware.backend import IoawareBackend
from ioaware.codegen.scan.op import linear_scan, selective_scan
from ioaware.verify import relative_error


class RestAs(IoawareBackend):
    """ioaware's rewrite, with the rest of the graph run as fx / aot_eager / inductor."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how

    def _finish(self, eager, gm, example_inputs, device):
        if self.how == "fx":
            return gm.forward
        if self.how == "aot_eager":
            from torch._dynamo.backends.registry import lookup_backend
            return lookup_backend("aot_eager")(gm, list(example_inputs))
        return super()._finish(eager, gm, example_inputs, device)


def grads_of(fn, args, grad=None):
    args = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*args)
    if grad is None:
        grad = torch.randn_like(out)
    gs = torch.autograd.grad(out, args, grad, allow_unused=True)
    return out.detach(), gs, grad


def compare(label, fn, ref_fn, args):
    ref, want, grad = grads_of(ref_fn, args)
    try:
        out, got, _ = grads_of(fn, args, grad)
    except Exception as e:  # noqa: BLE001
        print(f"{label:44s} FAILED {type(e).__name__}: {str(e)[:200]}")
        return
    errs = [relative_error(out, ref)] + [
        float("nan") if g is None or w is None else relative_error(g, w, floor=0.1)
        for g, w in zip(got, want)]
    print(f"{label:44s} " + " ".join(f"{e:9.2e}" for e in errs), flush=True)


def selective_case(form: str, length: int, dtype=torch.float32, n=16):
    from test_scan_compile_gpu import mamba_scan

    gen = torch.Generator(device="cuda").manual_seed(length)
    bt, dc = 2, 48

    def rand(*shape, positive=False):
        x = (torch.rand if positive else torch.randn)(*shape, generator=gen, device="cuda")
        return x.to(dtype)

    args = (rand(bt, dc, length), rand(bt, dc, length, positive=True),
            -torch.rand(dc, n, generator=gen, device="cuda").to(dtype),
            rand(bt, length, n), rand(bt, length, n), rand(dc), rand(bt, dc, length))
    return mamba_scan(form), args


def direct_selective(u, delta, A, B, C, D, z):
    return selective_scan(u, delta, A, B[:, None], C[:, None], D, z)[0]


def scan_diagnosis():
    print("== scan gradients: relative error vs eager (out, then each input's grad) ==")
    print(f"{'case':44s} {'out':>9s} " + " ".join(f"{x:>9s}" for x in
                                                   ("du", "ddelta", "dA", "dB", "dC", "dD", "dz")))
    for form in ("pointwise", "loop"):
        for length in (2, 3, 17, 300):
            fn, args = selective_case(form, length)
            compare(f"direct op            {form:9s} L={length}", direct_selective, fn, args)
            for how in ("fx", "aot_eager", "inductor"):
                torch._dynamo.reset()
                compiled = torch.compile(fn, backend=RestAs(how))
                compare(f"rewrite, rest {how:9s} {form:9s} L={length}", compiled, fn, args)

    from torch._higher_order_ops.associative_scan import associative_scan

    def comb(left, right):
        return left[0] * right[0], right[0] * left[1] + right[1]

    def lin(a, b):
        return associative_scan(comb, (a, b), dim=1, combine_mode="pointwise")[1]

    def lin_loop(a, b):
        h, hs = torch.zeros_like(a[:, 0]), []
        for t in range(a.shape[1]):
            h = a[:, t] * h + b[:, t]
            hs.append(h)
        return torch.stack(hs, 1)

    print("== linear scan (a, b) ==")
    for length in (2, 3, 17, 300, 3000):
        a = 0.5 + 0.5 * torch.rand(4, length, 64, device="cuda")
        b = torch.randn(4, length, 64, device="cuda")
        ref = lin_loop if length <= 300 else lin
        compare(f"direct op linear_scan L={length}", lambda a, b: linear_scan(a, b), ref, (a, b))
        if length <= 300:
            compare(f"eager associative_scan L={length}", lin, ref, (a, b))
        for how in ("fx", "aot_eager", "inductor"):
            torch._dynamo.reset()
            compare(f"rewrite, rest {how:9s} L={length}",
                    torch.compile(lin, backend=RestAs(how)), ref, (a, b))


def attention_diagnosis():


    import ioaware
    from ioaware.bench.attention import AttentionProblem
    from ioaware.bench.masks import _spec, sliding_window_attention
    from ioaware.codegen.attention import op as ops

    print("== sliding window 512, bf16 2x16x8192x128: direct kernel vs ioaware.compile ==")
    problem = AttentionProblem(2, 16, 8192, 128, torch.bfloat16, causal=True)
    spec = _spec("sliding_window", problem)
    q, k, v = (torch.randn(2, 16, 8192, 128, device="cuda", dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    direct = lambda q, k, v: ops.attention(q, k, v, spec, [])
    compiled = ioaware.compile(sliding_window_attention)
    visible = 2 * 16 * sum(min(i + 1, 512) for i in range(8192))
    for name, f in (("direct", direct), ("compiled", compiled)):
        for grad_mode in (True, False):
            with torch.set_grad_enabled(grad_mode):
                for _ in range(3):
                    f(q, k, v)
                torch.cuda.synchronize()
                from triton.testing import do_bench
                ms = do_bench(lambda f=f: f(q, k, v), warmup=25, rep=100)
                tf = 4 * 128 * visible / ms / 1e9
                print(f"{name:9s} grad={grad_mode!s:5s} {ms * 1e3:8.1f} us  {tf:6.1f} TFLOP/s")
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as p:
                    f(q, k, v)
                    torch.cuda.synchronize()
                for e in p.key_averages():
                    if e.device_time_total > 0:
                        print(f"    {e.key[:70]:70s} {e.device_time_total:9.1f} us x{e.count}")


def sdpa_diagnosis():
    """What SDPA gives a query row whose keys are all masked, per dtype, head dim, mask
    kind, grad mode and backend (the rows left padding makes), forward and dq."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    print("== SDPA, fully masked rows: out / dq of those rows (zero, nan, mean_v, other) ==")
    backends = {"default": None, "math": SDPBackend.MATH,
                "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION}

    def kind_of(x, mean_v):
        if torch.isnan(x).all():
            return "nan"
        if torch.isnan(x).any():
            return "some-nan"
        if (x == 0).all():
            return "zero"
        if mean_v is not None and torch.allclose(x.float(), mean_v.float(), atol=2e-2):
            return "mean_v"
        return "other"

    n = 64
    i = torch.arange(n, device="cuda")
    causal = i[None, :] <= i[:, None]
    pad = torch.ones(2, n, dtype=torch.bool, device="cuda")
    pad[0, :9] = False
    allowed = (causal[None] & pad[:, None, :])[:, None]  # [2, 1, n, n]
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for d in (16, 64, 128):
            for mask_kind in ("bool", "-inf", "min"):
                if mask_kind == "bool":
                    mask = allowed
                else:
                    fill = float("-inf") if mask_kind == "-inf" else torch.finfo(dtype).min
                    mask = torch.zeros(allowed.shape, dtype=dtype, device="cuda")
                    mask = mask.masked_fill(~allowed, fill)
                for grad in (False, True):
                    q, k, v = (torch.randn(2, 2, n, d, device="cuda", dtype=dtype,
                                           requires_grad=grad) for _ in range(3))
                    try:
                        choice = int(torch._fused_sdp_choice(q, k, v, mask, 0.0, False))
                    except Exception as e:  # noqa: BLE001
                        choice = f"? {type(e).__name__}"
                    cells = []
                    for name, backend in backends.items():
                        try:
                            if backend is None:
                                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                            else:
                                with sdpa_kernel(backend):
                                    out = F.scaled_dot_product_attention(q, k, v,
                                                                         attn_mask=mask)
                            rows = out[0, :, :9]
                            cell = kind_of(rows, v[0].mean(1, keepdim=True).expand_as(rows))
                            if grad:
                                dq, = torch.autograd.grad(out, q, torch.ones_like(out))
                                cell += "/" + kind_of(dq[0, :, :9], None)
                        except Exception as e:  # noqa: BLE001
                            cell = f"err:{type(e).__name__}"
                        cells.append(f"{name}={cell}")
                    print(f"{str(dtype)[6:]:8s} d={d:3d} {mask_kind:4s} grad={grad!s:5s} "
                          f"choice={choice} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    what = sys.argv[1:] or ["scan", "attention", "sdpa"]
    if "scan" in what:
        scan_diagnosis()
    if "attention" in what:
        attention_diagnosis()
    if "sdpa" in what:
        sdpa_diagnosis()
