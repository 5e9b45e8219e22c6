"""Generated programs compared with eager (issue 14).

Programs come from `grammar.py`; each is compiled once with `ioaware.compile(...,
dynamic=True)` and run on CASES_PER_PROGRAM inputs of other sizes and values, each
compared with eager: outputs, gradients, NaN and inf patterns (tests/eager_compare.py).
One program in INTERPRET_EVERY runs its kernels under Triton's interpreter; the rest
run the rewritten graph on the CPU reference path, which checks what the passes made
of the program (the Spec) against eager at a fraction of the cost.

    IOAWARE_GENERATED_CASES   cases per run (default 2000; 20000 for the long mode)
    IOAWARE_GENERATED_SEED    the run's seed (default SEED; printed either way)

A failure prints each failing program as a standalone script (its source, its inputs
and the comparison), runnable from tests/.
"""

from __future__ import annotations

import logging
import os
import random
import warnings

import pytest
import torch
from eager_compare import compare
from generated import grammar

import ioaware
from ioaware.config import config

SEED = 14_2026
CASES = int(os.environ.get("IOAWARE_GENERATED_CASES", "2000"))
RUN_SEED = int(os.environ.get("IOAWARE_GENERATED_SEED", str(SEED)))
# Cases per program: one compile, then inputs of other sizes and values (cheap: the
# compiled graph is reused). Interpreted programs run fewer: each call interprets the
# kernels. A program that eager rejects is tried on two inputs (each retraces).
CASES_PER_PROGRAM = 48
CASES_INTERPRETED = 3
CASES_REJECTED = 2
INTERPRET_EVERY = 16
SHARDS = 8


def _cases(program: grammar.Program, compiled, fn, rng: random.Random, budget: int,
           mode: str, device: str) -> tuple[int, list[str]]:
    done, failures = 0, []
    for case in range(budget):
        p = program if case == 0 else program.resized(rng, program.seed + case)
        inputs = p.make_inputs(device)
        if case == 0:
            try:
                fn(*p.make_inputs(device))
            except Exception:  # noqa: BLE001 - eager rejects it: ioaware must too
                budget = min(budget, CASES_REJECTED)
        if case >= budget:
            break
        try:
            problems = compare(fn, inputs, p.torch_dtype, compiled)
        except Exception as e:  # noqa: BLE001 - a crash is a finding, reported
            problems = [f"crash: {type(e).__name__}: {e}"]
        done += 1
        if problems:
            failures.append(f"{'; '.join(problems)} ({mode})\n{p.script()}")
    return done, failures


def run_programs(seed: int, cases: int, *, interpret_every: int = INTERPRET_EVERY,
                 device: str = "cpu") -> tuple[int, list[str]]:
    """(cases compared, failure reports) of `cases` cases drawn from `seed` on `device`
    (on CUDA every program runs compiled kernels)."""
    rng = random.Random(seed)
    done, failures = 0, []
    index = 0
    while done < cases:
        program = grammar.draw(rng, seed * 1_000_003 + index)
        interpret = device == "cpu" and interpret_every > 0 and index % interpret_every == 0
        index += 1
        torch._dynamo.reset()
        old = config.interpret
        config.interpret = interpret
        try:
            fn = program.function()
            budget = min(CASES_INTERPRETED if interpret else CASES_PER_PROGRAM, cases - done)
            mode = ("compiled kernels" if device != "cpu" else
                    "interpreted kernels" if interpret else "reference path")
            n, found = _cases(program, ioaware.compile(fn, dynamic=True), fn, rng, budget,
                              mode, device)
        finally:
            config.interpret = old
        done += n
        failures += found
    return done, failures


@pytest.mark.parametrize("shard", range(SHARDS))
def test_generated_programs_match_eager(shard, capsys):
    seed = RUN_SEED * SHARDS + shard
    with capsys.disabled():
        print(f"\n[generated] run seed {RUN_SEED}, shard {shard}: seed {seed}, "
              f"{CASES // SHARDS} cases (IOAWARE_GENERATED_SEED={RUN_SEED})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            done, failures = run_programs(seed, CASES // SHARDS)
        finally:
            logging.disable(logging.NOTSET)
    assert done >= CASES // SHARDS
    assert not failures, (f"{len(failures)} of {done} cases differ from eager; the first "
                          "as scripts:\n\n" + "\n\n".join(failures[:3]))
