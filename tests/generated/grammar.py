"""A grammar of attention and recurrence programs, written out as Python source.

`draw(rng)` returns a `Program`: the source of `def program(...)` as a person might
write it, and how to make its inputs. Each choice below is one production of the
grammar; together they cover the spellings, scales, masks, biases, GQA forms, dtypes,
sizes (1 and non-powers of two included), SDPA arguments, recurrences, and near-misses:
programs that look like attention or a scan but are not, which ioaware must leave
alone or rewrite to exactly what they compute. Nothing is drawn or dropped according
to what ioaware does with it: every program is compared with eager.

The source is the reproducer: `Program.script()` is a file that rebuilds the inputs and
compares ioaware with eager on its own.
"""

from __future__ import annotations

import dataclasses
import math
import random
import textwrap

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIZES = (1, 2, 3, 5, 8, 13, 16, 17)
HEAD_DIMS = (1, 4, 8, 12, 16)


@dataclasses.dataclass
class Input:
    name: str
    shape: tuple[int, ...]
    kind: str  # "randn", "keep" (bool, mostly True), "positive" (in (0.5, 1))
    grad: bool = False
    scale: float = 1.0


@dataclasses.dataclass
class Program:
    family: str  # "attention", "sdpa", "scan", "near_miss"
    source: str
    inputs: list[Input]
    dtype: str
    seed: int

    def resized(self, rng: random.Random, seed: int) -> Program:
        """The same program on inputs of other sizes (and values, from `seed`): every
        axis the source does not fix is redrawn from sizes above 1, consistently across
        the inputs, so a program compiled with dynamic=True mostly runs them without a
        recompile (size 1 is specialised; the first inputs drawn may hold it). A scan's
        length stays: its loop is unrolled, each length is another graph."""
        fixed = {}
        if self.family == "scan":
            fixed["L"] = self.inputs[0].shape[1]

        def size(key: str) -> int:
            if key not in fixed:
                fixed[key] = rng.choice(SIZES[1:])
            return fixed[key]

        inputs = []
        for x in self.inputs:
            shape = list(x.shape)
            for axis, role in _axes(self, x.name, len(shape)):
                shape[axis] = size(role)
            inputs.append(dataclasses.replace(x, shape=tuple(shape)))
        return dataclasses.replace(self, inputs=inputs, seed=seed)

    def function(self):
        ns: dict = {}
        exec(compile(self.source, f"<program {self.seed}>", "exec"), _namespace(), ns)  # noqa: S102
        return ns["program"]

    def make_inputs(self, device: str = "cpu") -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        dtype = DTYPES[self.dtype]
        out = []
        for x in self.inputs:
            if x.kind == "keep":
                t = torch.rand(x.shape, generator=gen) > 0.25
            elif x.kind == "positive":
                t = (0.5 + 0.5 * torch.rand(x.shape, generator=gen)).to(dtype)
            else:
                t = (torch.randn(x.shape, generator=gen) * x.scale).to(dtype)
            t = t.to(device)
            out.append(t.requires_grad_(x.grad) if t.is_floating_point() else t)
        return out

    def script(self) -> str:
        """A standalone reproducer: imports, the program, its inputs, the comparison."""
        inputs = ",\n    ".join(repr(dataclasses.astuple(x)) for x in self.inputs)
        return f'''\
# generated program, family {self.family}, seed {self.seed}, dtype {self.dtype}
import math
import torch
import torch.nn.functional as F
from generated.grammar import Input, Program  # tests/ on sys.path
from eager_compare import compare

{self.source}
p = Program({self.family!r}, SOURCE, [Input(*a) for a in [
    {inputs}]], {self.dtype!r}, {self.seed})
print(compare(program, p.make_inputs(), p.torch_dtype) or "ioaware matches eager")
'''.replace("SOURCE", repr(self.source))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


# Which axes of each input may take other sizes, and the role that ties them together.
_ATTENTION_AXES = {"q": [(0, "B"), (2, "NQ")], "k": [(0, "B"), (2, "NK")],
                   "v": [(0, "B"), (2, "NK")], "keep": [(0, "B"), (1, "NK")]}


def _axes(program: Program, name: str, ndim: int) -> list[tuple[int, str]]:
    """(axis, role) pairs of input `name`; heads and head dims stay as drawn (the
    source may name them: a GQA group, a literal scale)."""
    if program.family == "scan":
        return [(0, "R"), (1, "L")] if ndim == 3 else [(0, "R")]
    if name == "bias":  # [1, H, NQ, NK]
        return [(2, "NQ"), (3, "NK")]
    if name == "bias_bk":  # [B, 1, 1, NK]
        return [(0, "B"), (3, "NK")]
    if name == "k" and "tanh_recurrence" in program.source:  # k is shaped as q
        return [(0, "B"), (2, "NQ")]
    return _ATTENTION_AXES.get(name, [])


def _namespace() -> dict:
    import torch.nn.functional as F

    return {"torch": torch, "F": F, "math": math}


def draw(rng: random.Random, seed: int) -> Program:
    """One program; `seed` also fixes its input values."""
    family = rng.choices(["attention", "sdpa", "scan", "near_miss"], [5, 2, 2, 2])[0]
    dtype = rng.choices(list(DTYPES), [6, 2, 2])[0]
    return {"attention": _attention, "sdpa": _sdpa, "scan": _scan,
            "near_miss": _near_miss}[family](rng, seed, dtype)


def _dims(rng: random.Random) -> dict:
    hkv = rng.choice((1, 2))
    group = rng.choice((1, 1, 2, 3))
    d = rng.choice(HEAD_DIMS)
    return {"B": rng.choice((1, 2)), "HQ": hkv * group, "HKV": hkv, "G": group,
            "NQ": rng.choice(SIZES), "NK": rng.choice(SIZES), "D": d,
            "DV": rng.choice((d, d, 4, 8))}


def _qkv(dims: dict, grad: bool, scale: float = 1.0) -> list[Input]:
    b, hq, hkv, nq, nk, d, dv = (dims[x] for x in ("B", "HQ", "HKV", "NQ", "NK", "D", "DV"))
    return [Input("q", (b, hq, nq, d), "randn", grad, scale),
            Input("k", (b, hkv, nk, d), "randn", grad, scale),
            Input("v", (b, hkv, nk, dv), "randn", grad)]


def _scale(rng: random.Random, d: int) -> tuple[str, str]:
    """(product line with its scale, how the scale reads): the scale's spellings."""
    prod = rng.choice(["q @ k.transpose(-2, -1)", "torch.matmul(q, k.transpose(-1, -2))",
                       "torch.einsum('bhqd,bhkd->bhqk', q, k)", "q @ k.mT"])
    c = rng.choice([0.25, 0.125, 1 / math.sqrt(d), 1.0, 0.7])
    form = rng.choice(["mul", "div", "sqrt", "pre", "none"])
    if form == "mul":
        return f"s = ({prod}) * {c!r}", "mul"
    if form == "div":
        return f"s = ({prod}) / {1 / c!r}", "div"
    if form == "sqrt":
        return f"s = ({prod}) / math.sqrt(q.shape[-1])", "sqrt"
    if form == "pre":
        return f"s = {prod.replace('(q,', '(q * ' + repr(c) + ',').replace('q @', f'(q * {c!r}) @')}", "pre"
    return f"s = {prod}", "none"


MASK_ATOMS = ("causal", "window", "padding", "from_q", "prefix", "causal_bottom_right")


def _mask_lines(rng: random.Random, dims: dict) -> tuple[list[str], list[Input]]:
    """Lines defining `allowed` (bool, broadcastable to [B, H, NQ, NK]) and its inputs."""
    atoms = rng.sample(MASK_ATOMS, rng.choice((1, 1, 2)))
    lines = ["i = torch.arange(q.shape[-2], device=q.device)[:, None]",
             "j = torch.arange(k.shape[-2], device=q.device)[None, :]"]
    terms, inputs = [], []
    for a in atoms:
        if a == "causal":
            terms.append(rng.choice(["(j <= i)", ("torch.ones(q.shape[-2], k.shape[-2], "
                                     "dtype=torch.bool, device=q.device).tril()")]))
        elif a == "causal_bottom_right":
            terms.append("(j <= i + (k.shape[-2] - q.shape[-2]))")
        elif a == "window":
            terms.append(f"((i - j).abs() < {rng.choice((1, 2, 4))})")
        elif a == "prefix":
            terms.append(f"((j <= i) | (j < {rng.choice((1, 3))}))")
        elif a == "padding":
            inputs.append(Input("keep", (dims["B"], dims["NK"]), "keep"))
            terms.append("keep[:, None, None, :]")
        else:
            terms.append(f"(q.float().sum(-1, keepdim=True) < {rng.choice((0.0, 1.0, 3.0))})")
    lines.append("allowed = " + " & ".join(terms))
    return lines, inputs


MASK_SPELLINGS = ("masked_fill", "where", "add_inf", "add_min", "fill_min", "fill_finite",
                  "mul_min")


def _apply_mask(spelling: str) -> str:
    return {
        "masked_fill": "s = s.masked_fill(~allowed, float('-inf'))",
        "where": "s = torch.where(allowed, s, float('-inf'))",
        "add_inf": "s = s + torch.where(allowed, 0.0, float('-inf'))",
        "add_min": "s = s + torch.where(allowed, 0.0, torch.finfo(s.dtype).min)",
        "fill_min": "s = s.masked_fill(allowed.logical_not(), torch.finfo(s.dtype).min)",
        "fill_finite": "s = s.masked_fill(~allowed, -1000.0)",
        "mul_min": "s = s + (1.0 - allowed.to(s.dtype)) * torch.finfo(s.dtype).min",
    }[spelling]


def _gqa(rng: random.Random, dims: dict) -> list[str]:
    if dims["G"] == 1:
        return []
    g = dims["G"]
    if rng.random() < 0.5:
        return [f"k = k.repeat_interleave({g}, dim=1)", f"v = v.repeat_interleave({g}, dim=1)"]
    return [f"k = k[:, :, None].expand(-1, -1, {g}, -1, -1).flatten(1, 2)",
            f"v = v[:, :, None].expand(-1, -1, {g}, -1, -1).flatten(1, 2)"]


def _softmax(rng: random.Random) -> str:
    return rng.choice(["p = torch.softmax(s, dim=-1)", "p = s.softmax(-1)",
                       "p = F.softmax(s.float(), dim=-1).to(v.dtype)",
                       "p = torch.softmax(s, -1, dtype=torch.float32).type_as(v)"])


def _out(rng: random.Random) -> str:
    return rng.choice(["return p @ v", "return torch.matmul(p, v)",
                       "return torch.einsum('bhqk,bhkd->bhqd', p, v)",
                       "return (p @ v).transpose(1, 2)"])


def _function(args: list[str], body: list[str]) -> str:
    return f"def program({', '.join(args)}):\n" + textwrap.indent("\n".join(body), "    ")


def _attention(rng: random.Random, seed: int, dtype: str) -> Program:
    dims = _dims(rng)
    grad = rng.random() < 0.7
    inputs = _qkv(dims, grad, rng.choice((1.0, 1.0, 3.0)))
    body = _gqa(rng, dims)
    product, _ = _scale(rng, dims["D"])
    body.append(product)
    if rng.random() < 0.3:  # a bias: learned, before or after the scale, or ALiBi
        kind = rng.choice(["learned", "alibi", "learned_bk"])
        if kind == "learned":
            inputs.append(Input("bias", (1, dims["HQ"], dims["NQ"], dims["NK"]), "randn",
                                grad and rng.random() < 0.5))
            body.append("s = s + bias")
        elif kind == "learned_bk":
            inputs.append(Input("bias_bk", (dims["B"], 1, 1, dims["NK"]), "randn"))
            body.append("s = s + bias_bk")
        else:
            body += [("slopes = torch.tensor([2.0 ** -(h + 1) for h in range(q.shape[1])], "
                     "dtype=q.dtype, device=q.device)"),
                     ("rel = (torch.arange(k.shape[-2], device=q.device)[None, :]"
                     " - torch.arange(q.shape[-2], device=q.device)[:, None])"),
                     "s = s + slopes[:, None, None] * rel"]
    if rng.random() < 0.15:
        body.append("s = torch.tanh(s / 5.0) * 5.0")
    if rng.random() < 0.7:
        lines, extra = _mask_lines(rng, dims)
        body += lines + [_apply_mask(rng.choice(MASK_SPELLINGS))]
        inputs += extra
    body += [_softmax(rng), _out(rng)]
    return Program("attention", _function([x.name for x in inputs], body), inputs, dtype, seed)


def _sdpa(rng: random.Random, seed: int, dtype: str) -> Program:
    dims = _dims(rng)
    grad = rng.random() < 0.7
    inputs = _qkv(dims, grad)
    body = []
    kwargs = []
    gqa = dims["G"] > 1
    if gqa:
        if rng.random() < 0.5:
            kwargs.append("enable_gqa=True")
        else:
            body += _gqa(rng, dims)
    mask = rng.choice(["none", "none", "bool", "float", "causal", "both"])
    if mask in ("bool", "float", "both"):
        lines, extra = _mask_lines(rng, dims)
        body += lines
        inputs += extra
        if mask == "float":
            body.append("allowed = torch.where(allowed, 0.0, float('-inf')).to(q.dtype)")
        kwargs.insert(0, "attn_mask=allowed")
    if mask in ("causal", "both"):  # both: eager raises, ioaware must raise the same
        kwargs.append("is_causal=True")
    if rng.random() < 0.5:
        kwargs.append(f"scale={rng.choice((0.25, 0.5, 1.0))!r}")
    body.append(f"return F.scaled_dot_product_attention({', '.join(['q', 'k', 'v'] + kwargs)})")
    return Program("sdpa", _function([x.name for x in inputs], body), inputs, dtype, seed)


def _scan(rng: random.Random, seed: int, dtype: str) -> Program:
    r, length, f = rng.choice((1, 2, 3)), rng.choice(SIZES), rng.choice((1, 4, 5, 8))
    grad = rng.random() < 0.7
    inputs = [Input("a", (r, length, f), "positive", grad), Input("b", (r, length, f), "randn", grad),
              Input("h0", (r, f), "randn", grad)]
    form = rng.choice(["loop", "reverse", "ema", "cumsum", "gated", "loop_list"])
    if form == "cumsum":
        body = ["p = torch.exp(torch.cumsum(torch.log(a), dim=1))",
                "return p * torch.cumsum(b / p, dim=1)"]
    elif form == "loop_list":
        body = ["h = torch.zeros_like(h0)", "hs = []", "for t in range(a.shape[1]):",
                "    h = a[:, t] * h + b[:, t]", "    hs.append(h)", "return torch.stack(hs, 1)"]
    else:
        start = "h0" if form == "gated" else "torch.zeros_like(h0)"
        steps = "reversed(range(a.shape[1]))" if form == "reverse" else "range(a.shape[1])"
        step = "0.9 * h" if form == "ema" else "a[:, t] * h"
        body = [f"h = {start}", "out = [None] * a.shape[1]", f"for t in {steps}:",
                f"    h = {step} + b[:, t]", "    out[t] = h", "return torch.stack(out, 1)"]
    return Program("scan", _function(["a", "b", "h0"], body), inputs, dtype, seed)


NEAR_MISSES = {
    # softmax over the query axis: not attention over keys
    "softmax_dim_2": ["s = q @ k.transpose(-2, -1) * 0.25", "return torch.softmax(s, -2) @ v"],
    # the mask reads the scores themselves
    "mask_from_scores": ["s = q @ k.transpose(-2, -1) * 0.25",
                         "s = s.masked_fill(s > 1.0, float('-inf'))",
                         "return torch.softmax(s, -1) @ v"],
    # P is used twice: the probabilities are an output too
    "p_escapes": ["p = torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1)",
                  "return p @ v, p.sum(-1)"],
    # P edited after softmax
    "p_edited": ["p = torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1)",
                 "return (p * (p > 0.1)) @ v"],
    "log_softmax": ["return torch.log_softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v"],
    # tanh after the mask: the masked -inf becomes -1
    "tanh_after_mask": ["s = q @ k.transpose(-2, -1) * 0.25",
                        ("s = s.masked_fill(torch.ones(q.shape[-2], k.shape[-2], "
                        "dtype=torch.bool, device=q.device).triu(1), float('-inf'))"),
                        "return torch.softmax(torch.tanh(s), -1) @ v"],
    # scores squared: not a product of q and k alone
    "squared_scores": ["s = (q @ k.transpose(-2, -1)) ** 2 * 0.1",
                       "return torch.softmax(s, -1) @ v"],
    # a scale after softmax: 2·attention, exactly
    "scaled_p": ["return (2.0 * torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1)) @ v"],
    # the output edited in place before the backward
    "out_in_place": ["return (torch.softmax(q @ k.transpose(-2, -1) * 0.25, -1) @ v).mul_(0.5)"],
    # nonlinear recurrence: not a linear scan
    "tanh_recurrence": ["h = torch.zeros_like(q[:, :, 0])", "hs = []",
                        "for t in range(q.shape[2]):",
                        "    h = torch.tanh(k[:, :, t] * h + q[:, :, t])", "    hs.append(h)",
                        "return torch.stack(hs, 2)"],
    # data-dependent Python control: a graph break
    "item_branch": ["s = q @ k.transpose(-2, -1) * 0.25",
                    "if s.sum().item() > 0:", "    s = s * 0.5",
                    "return torch.softmax(s, -1) @ v"],
}


def _near_miss(rng: random.Random, seed: int, dtype: str) -> Program:
    name = rng.choice(sorted(NEAR_MISSES))
    dims = _dims(rng)
    dims["HKV"], dims["G"] = dims["HQ"], 1
    if name == "tanh_recurrence":
        dims["D"] = dims["DV"] = dims["D"]
        dims["NK"] = dims["NQ"]
    inputs = _qkv(dims, rng.random() < 0.7)
    if name == "tanh_recurrence":
        inputs[1].shape = inputs[0].shape
    body = NEAR_MISSES[name]
    return Program("near_miss", f"# near-miss: {name}\n" + _function(["q", "k", "v"], body),
                   inputs, dtype, seed)
