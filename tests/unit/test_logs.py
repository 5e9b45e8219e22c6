"""TORCH_LOGS=ioaware beside torch's own logs, and ioaware's decisions as a structured
trace artifact (what tlparse reads) under TORCH_TRACE."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ioaware import logs

CODE = (
    "import torch, ioaware\n"
    "f = lambda q, k, v: (q @ k.transpose(-2, -1)).softmax(-2) @ v + "
    "(q @ k.transpose(-2, -1)).softmax(-1) @ v\n"
    "q = torch.randn(1, 2, 8, 16)\n"
    "ioaware.compile(f)(q, q, q)\n"
)


def test_torch_logs_and_trace_artifact(tmp_path):
    env = dict(os.environ, TORCH_LOGS="ioaware,recompiles,graph_breaks",
               TORCH_TRACE=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True,
                         text=True, timeout=300, check=True)
    lines = [line for line in run.stderr.splitlines() if "ioaware/logs.py" in line]
    # one line per graph's summary and one per fallback, each once (torch's handler only)
    assert len(lines) == 2, run.stderr
    assert "graph 0: rewrote 1 region(s): attention" in lines[0]
    assert "left attention:" in lines[1] and "key (last) axis" in lines[1]

    traces = list(tmp_path.iterdir())
    text = "".join(p.read_text() for p in traces)
    assert f'"name": "{logs.ARTIFACT}"' in text
    # The payload follows its metadata line, its lines tab-indented (torch's format).
    start = text.index(f'"name": "{logs.ARTIFACT}"')
    payload = []
    for line in text[start:].splitlines()[1:]:
        if not line.startswith("\t"):
            break
        payload.append(line[1:])
    decided = json.loads("\n".join(payload))
    assert decided["graph"] == 0
    assert [r["kind"] for r in decided["rewrites"]] == ["attention"]
    assert "key (last) axis" in decided["fallbacks"][0]["reason"]
