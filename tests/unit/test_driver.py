"""The pass driver on a toy pass (relu → sigmoid): what it applies and records, the
fallbacks it writes with their reasons, and candidates an earlier rewrite removed."""

from __future__ import annotations

import torch
from torch import fx

from ioaware import cost, hardware
from ioaware.passes.driver import Match, NoMatch, Pass, PassContext, run_pass

CTX = PassContext(hardware.get_profile("h100"), "reference", {})


def graph() -> fx.GraphModule:
    return fx.symbolic_trace(lambda x: torch.relu(x) + torch.relu(x * 2))


def relus(gm, ctx):
    return [n for n in gm.graph.nodes if n.target is torch.relu]


def priced(node, before_bytes, after_bytes, **kwargs):
    return Match(plan=node, anchor=node.name, before=cost.Cost(read_bytes=before_bytes),
                 after=cost.Cost(read_bytes=after_bytes), dtype="float32",
                 detail={"op": "sigmoid"}, **kwargs)


def to_sigmoid(gm, node):
    node.target = torch.sigmoid
    gm.recompile()


def toy(match, apply=to_sigmoid) -> Pass:
    return Pass("toy", "relu becomes sigmoid", relus, match, apply)


def test_a_rewrite_that_pays_is_applied_and_recorded():
    gm = graph()
    out = run_pass(toy(lambda gm, n, ctx: priced(n, 1000, 10)), gm, CTX)
    assert len(out.rewrites) == 2 and not out.fallbacks
    r = out.rewrites[0]
    assert (r.kind, r.detail, r.backend) == ("toy", {"op": "sigmoid"}, "reference")
    assert (r.hbm_bytes_before, r.hbm_bytes_after) == (1000, 10)  # reads only
    assert out.seconds["toy"] >= 0
    assert not relus(gm, CTX)


def test_a_rewrite_that_does_not_pay_is_left_unless_it_always_pays():
    out = run_pass(toy(lambda gm, n, ctx: priced(n, 10, 1000)), graph(), CTX)
    assert not out.rewrites and len(out.fallbacks) == 2
    assert out.fallbacks[0].reason.startswith("relu: rewrite would not pay (does not pay")
    out = run_pass(toy(lambda gm, n, ctx: priced(n, 10, 1000, always_pays=True)), graph(), CTX)
    assert len(out.rewrites) == 2 and not out.fallbacks


def test_no_match_and_bugs_become_fallbacks_naming_the_node():
    def refuse(gm, node, ctx):
        raise NoMatch(f"{node.name}: not wanted")

    def bug(gm, node, ctx):
        raise KeyError("planted")

    out = run_pass(toy(refuse), graph(), CTX)
    assert [(f.kind, f.reason) for f in out.fallbacks] == [
        ("toy", "relu: not wanted"), ("toy", "relu_1: not wanted")]
    out = run_pass(toy(bug), graph(), CTX)
    assert out.fallbacks[0].reason == ("relu: internal error while matching (KeyError: "
                                       "'planted'); left to eager, please report")


def test_candidates_an_earlier_rewrite_removed_are_skipped():
    def erase_every_relu(gm, node):
        for n in relus(gm, CTX):
            n.replace_all_uses_with(n.args[0])
            gm.graph.erase_node(n)
        gm.recompile()

    out = run_pass(toy(lambda gm, n, ctx: priced(n, 1000, 10), erase_every_relu), graph(), CTX)
    assert len(out.rewrites) == 1 and not out.fallbacks
