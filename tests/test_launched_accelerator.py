"""launched_accelerator on CPU processes: two torchrun processes form one accelerate launch (gloo), so gradients
are averaged across them instead of each process training alone."""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")
ROOT = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
import torch
from mkvlib.commands.common import launched_accelerator

# the default (None) picks the CPU on a machine without CUDA; beside a GPU the CPU must be asked for
accelerator = launched_accelerator(cpu=True if torch.cuda.is_available() else None)
if accelerator is None:
    print(json.dumps({"accelerator": None}), flush=True)
    sys.exit(3)
total = accelerator.reduce(torch.tensor([accelerator.process_index + 1.0]), reduction="sum")
print(json.dumps({"rank": accelerator.process_index, "processes": accelerator.num_processes,
                  "device": accelerator.device.type, "sum": float(total)}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_form_one_launch(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(script)],
                          capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    # the two processes share stdout, so their lines may run together: read every JSON object wherever it starts
    rows = [json.loads(obj) for obj in re.findall(r"\{[^{}]*\}", proc.stdout)]
    assert proc.returncode == 0, (rows, proc.stderr[-3000:])
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["processes"] == 2 and r["device"] == "cpu" and r["sum"] == 3.0 for r in rows), rows
