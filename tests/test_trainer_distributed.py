import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest


TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    # torchrun's summary ends stderr; the cause (a rank's traceback or abort message) comes before it.
    causes = [line for line in result.stderr.splitlines() if "Error" in line or "terminate" in line or "what()" in line]
    assert result.returncode == 0, "\n".join(causes[:40]) + "\n" + result.stdout[-2000:] + result.stderr[-4000:]


@pytest.mark.parametrize(
    "granularity, per_device_batch_size, gradient_accumulation_steps, class_taylor",
    [("weight", 8, 1, False), ("channel", 4, 2, False), ("channel", 8, 1, True)],
)
def test_two_processes_hold_identical_scores_votes_masks_and_alpha_at_every_stage(
    tmp_path, granularity, per_device_batch_size, gradient_accumulation_steps, class_taylor
):
    script = str(TESTS / "ddp_ltap_script.py")
    options = [granularity, str(gradient_accumulation_steps)] + (["class_taylor"] if class_taylor else [])
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
          "--main_process_port", str(_free_port()), script, str(tmp_path / "ddp"), str(per_device_batch_size), *options],
         tmp_path)
    _run([sys.executable, script, str(tmp_path / "single"), str(2 * per_device_batch_size), *options], tmp_path)
    rank0, rank1, single = (json.loads((tmp_path / name).read_text())
                            for name in ("ddp.rank0.json", "ddp.rank1.json", "single.rank0.json"))
    assert rank0["world_size"] == rank1["world_size"] == 2 and rank1["process_index"] == 1
    assert single["world_size"] == 1
    # Same global batch (2 x per-device x accumulation = 16 or 32): the same stage steps in both runs.
    assert [s["step"] for s in rank0["stages"]] == [s["step"] for s in single["stages"]]
    assert len(rank0["stages"]) == 4
    # What is never broadcast agrees bit for bit: the statistics accumulated from the all-reduced gradients
    # (before any mask broadcast), the vote counts D and α; and so do the masks.
    assert len(rank0["scores_sha256"]) == 4 and rank0["scores_sha256"] == rank1["scores_sha256"]
    # class_taylor (the six criteria vote): the class importance every stage ranks is the same on both ranks.
    assert len(rank0["class_importance_sha256"]) == (4 if class_taylor else 0)
    assert rank0["class_importance_sha256"] == rank1["class_importance_sha256"]
    for stage0, stage1 in zip(rank0["stages"], rank1["stages"]):
        assert len(stage0["alpha"]) == (6 if class_taylor else 5)
        assert stage0["votes"] == stage1["votes"] and stage0["alpha"] == stage1["alpha"]
        assert stage0["masks_sha256"] == stage1["masks_sha256"]
    # Weights: the density is the schedule's, to one weight. Channels: whole channels, at or just under it.
    tolerance = 1e-6 if granularity == "weight" else 0.03
    assert [s["density"] for s in rank0["stages"]] == pytest.approx([s["density"] for s in single["stages"]], abs=tolerance)
    assert 0.3 - tolerance <= rank0["stages"][-1]["density"] <= 0.3 + 1e-4
