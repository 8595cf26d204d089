"""Two training processes (accelerate launch -> torchrun, gloo on the CPU) against one process on the same
global batch, through `edgesight train` on tiny real models: the causal trainer (describe on the tiny
Llama, interrupted with --stop-after and resumed under two processes) and the token classifier
(keywords on a tiny BERT, with gradient accumulation). The loss curves agree to 1e-3 and the adapters to
1e-3 of their largest weight; the report and adapter are written once, by the main process.
About 50 s on 2 cores (each launch starts two Python processes that import torch)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("accelerate")
pytest.importorskip("peft")

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "EDGESIGHT_PROGRESS": "0", "HF_HUB_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false"}
COMMON = ["--dropout", "0", "--threads", "1", "--no-progress"]   # dropout masks differ with the process count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(args: list[str], processes: int = 1) -> None:
    if processes == 1:
        cmd = [sys.executable, "-m", "edgesight.cli", "train", *args, *COMMON]
    else:   # --multi_gpu only picks accelerate's torchrun launcher; on a CPU the processes use gloo
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), "-m", "edgesight.cli", "train", *args, *COMMON]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[:6000]


def adapter(run: Path) -> dict:
    from safetensors.numpy import load_file
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def assert_equivalent(one: Path, two: Path) -> dict:
    r1, r2 = (json.loads((run / "report.json").read_text()) for run in (one, two))
    assert (r1["recipe"]["world_size"], r2["recipe"]["world_size"]) == (1, 2)
    assert [s for s, _ in r1["loss_curve"]] == [s for s, _ in r2["loss_curve"]]
    curve = max(abs(a - b) for (_, a), (_, b) in zip(r1["loss_curve"], r2["loss_curve"]))
    assert curve <= 1e-3, (r1["loss_curve"], r2["loss_curve"])
    assert abs(r1["validation"][-1]["loss"] - r2["validation"][-1]["loss"]) <= 1e-3
    a, b = adapter(one), adapter(two)
    assert a.keys() == b.keys()
    diff, scale = max(float(np.abs(a[k] - b[k]).max()) for k in a), max(float(np.abs(a[k]).max()) for k in a)
    assert diff <= 1e-3 * scale, (diff, scale)
    figures = {"loss_curve_max_diff": curve, "adapter_max_diff": diff, "adapter_max_abs": scale,
               "val_loss": [r1["validation"][-1]["loss"], r2["validation"][-1]["loss"]]}
    print(f"equivalence {one.parent.name}: {json.dumps(figures)}")   # the figures docs/scale.md quotes (pytest -s)
    return figures


def test_causal_two_processes_with_resume_equal_one(tiny_llama_dir, tmp_path):
    args = ["describe", "--base", str(tiny_llama_dir), "--n-inputs", "120", "--steps", "6", "--save-every", "0",
            "--max-length", "96"]
    train([*args, "--batch-size", "4", "--out", str(tmp_path / "one")])
    two = tmp_path / "two"
    train([*args, "--batch-size", "2", "--out", str(two), "--stop-after", "3"], processes=2)
    state = json.loads((two / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 3 and not (two / "report.json").exists() and not (two / "adapter").exists()
    train([*args, "--batch-size", "2", "--out", str(two)], processes=2)          # resumes at step 3
    report = json.loads((two / "report.json").read_text())
    assert report["resumed_from"] == 3 and len(report["loss_curve"]) == 6
    assert sorted(p.name for p in two.iterdir()) == ["adapter", "checkpoint", "data", "report.json"]  # no leftovers
    assert_equivalent(tmp_path / "one", two)


def test_token_classifier_two_processes_equal_one(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from test_trainer import tiny_bert
    bert = tiny_bert(tmp_path / "bert")
    config = json.loads((bert / "config.json").read_text())   # BERT's own dropout, like LoRA's, draws per process
    (bert / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    args = ["keywords", "--base", str(bert), "--train-examples", "200", "--val-examples", "16", "--steps", "6",
            "--save-every", "0", "--lr", "3e-3"]
    train([*args, "--batch-size", "8", "--out", str(tmp_path / "one")])
    train([*args, "--batch-size", "2", "--grad-accum", "2", "--out", str(tmp_path / "two")], processes=2)
    assert_equivalent(tmp_path / "one", tmp_path / "two")
