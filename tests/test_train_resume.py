"""Tests for llava_mini.train's step checkpoints: exact resume (also under accumulation, QLoRA and 2
processes), only the trainable tensors saved, and no pickle in a checkpoint ever run.

The tiny towers, data and helpers are test_train.py's.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from safetensors import safe_open

from llava_mini.train import add_lora, qlora_quantization_config, train
from stand_ins import one_thread  # noqa: F401
from test_train import REPO, config, make_model, setup  # noqa: F401 (setup: the fixture)


@pytest.mark.parametrize("mode", ["one micro-batch", "accumulation", "qlora"])
def test_resumed_run_follows_the_uninterrupted_trajectory(setup, tmp_path, mode):
    # LoRA dropout on: the resumed run must also restore the RNG, not just weights and optimizer.
    changes = {"accumulation": dict(micro_batch_size=2), "qlora": dict(qlora=True)}.get(mode, {})
    build_kwargs = {} if mode != "qlora" else dict(lm=setup["lm64"],
                                                   quantization_config=qlora_quantization_config("fp32"))

    def run(out, resume=None, **more):
        cfg = config(tmp_path, stage=2, max_steps=6, lora_dropout=0.1, output_dir=str(out), **changes, **more)
        model = add_lora(make_model(setup, **build_kwargs), cfg)
        return train(model, setup["dataset"], setup["collator"], cfg, resume_from=resume)

    straight = run(tmp_path / "straight", save_every=3)
    assert (tmp_path / "straight" / "step-000003" / "training_state").exists()
    resumed = run(tmp_path / "straight", resume="latest")
    losses_a = [r["loss"] for r in straight.history]
    losses_b = [r["loss"] for r in resumed.history]
    assert len(losses_a) == len(losses_b) == 6
    np.testing.assert_allclose(losses_b, losses_a, rtol=0, atol=1e-6)
    assert losses_a[3] != losses_a[0]  # it did train


class Payload:
    """Unpickled as an object, it would create the file ``marker`` (what an attacker's code could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def step_checkpoint(setup, tmp_path_factory):
    """A stage-2 run of 4 steps with a step checkpoint at step 2 and entries of its own in run.json."""
    out = tmp_path_factory.mktemp("steps")
    cfg = config(out, stage=2, max_steps=4, save_every=2, lora_dropout=0.1)
    model = add_lora(make_model(setup), cfg)
    train(model, setup["dataset"], setup["collator"], cfg, run_info={"key": "abc123", "run_config": {"stage": "lora"}})
    return {"dir": out / "run" / "step-000002", "all": {n for n, _ in model.named_parameters()},
            "trainable": {n for n, p in model.named_parameters() if p.requires_grad}}


def test_step_checkpoints_hold_the_trainable_tensors_and_the_run_info(step_checkpoint):
    state = step_checkpoint["dir"] / "training_state"
    with safe_open(state / "model.safetensors", "pt") as saved:  # the frozen towers are not copied
        assert set(saved.keys()) == step_checkpoint["trainable"] != step_checkpoint["all"]
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "step.json"} <= {f.name for f in state.iterdir()}
    assert json.loads((state / "step.json").read_text()) == {"step": 2}
    for folder in (step_checkpoint["dir"], step_checkpoint["dir"].parent / "final"):
        run = json.loads((folder / "run.json").read_text())
        assert run["key"] == "abc123" and run["run_config"] == {"stage": "lora"} and run["stage"] == 2
    assert not list(step_checkpoint["dir"].parent.rglob("*.tmp"))


@pytest.mark.parametrize("planted, error, message", [
    ("optimizer.bin", ValueError, "optimizer.bin: refusing to resume from a file that holds a pickled io.open"),
    ("scheduler.bin", ValueError, "scheduler.bin: refusing .* pickled io.open"),
    ("random_states_0.pkl", ValueError, "random_states_0.pkl: refusing .* pickled io.open"),
    ("custom_checkpoint_0.pkl", RuntimeError, "custom checkpoints"),  # accelerate's weights_only=False path
])
def test_resume_never_runs_a_pickle_planted_in_a_step_checkpoint(setup, step_checkpoint, tmp_path, planted, error,
                                                                 message):
    trusting = tmp_path / "trusting.pt"  # the payload works: plain unpickling runs it
    torch.save({"state": Payload(tmp_path / "ran-when-trusted")}, trusting)
    torch.load(trusting, weights_only=False)
    assert (tmp_path / "ran-when-trusted").exists()

    copy = tmp_path / "run" / step_checkpoint["dir"].name
    shutil.copytree(step_checkpoint["dir"], copy)
    marker = tmp_path / "payload-ran"
    torch.save({"state": Payload(marker)}, copy / "training_state" / planted)
    cfg = config(tmp_path, stage=2, max_steps=4, lora_dropout=0.1)
    with pytest.raises(error, match=message):
        train(add_lora(make_model(setup), cfg), setup["dataset"], setup["collator"], cfg, resume_from="latest")
    assert not marker.exists()


WORKER = textwrap.dedent("""
    import json, sys, torch
    from transformers import AutoTokenizer, CLIPImageProcessor
    from llava_mini.config import TrainConfig
    from llava_mini.model import LlavaCollator, LlavaInstructDataset, build
    from llava_mini.train import add_lora, train
    vision, lm, records, images, out = sys.argv[1:6]
    tokenizer = AutoTokenizer.from_pretrained(lm)
    dataset = LlavaInstructDataset(records, images, tokenizer, CLIPImageProcessor.from_pretrained(vision), 16)
    losses = {}
    for dropout, resume in [(0.0, None), (0.1, None), (0.1, "latest")]:  # resumed from the step-2 checkpoint
        cfg = TrainConfig(stage=2, output_dir=f"{out}/{dropout}", max_steps=3, batch_size=4, micro_batch_size=MICRO,
                          lr=1e-2, lora_r=4, lora_alpha=8, lora_dropout=dropout, progress=False, save_every=2)
        torch.manual_seed(0)
        model = add_lora(build(vision, lm, image_token_id=tokenizer.convert_tokens_to_ids("<image>")), cfg)
        result = train(model, dataset, LlavaCollator(tokenizer.pad_token_id), cfg, resume_from=resume)
        losses[f"{dropout} {resume}"] = [r["loss"] for r in result.history]
    if "RANK" in __import__("os").environ:  # launched by torchrun: the two processes really were one group
        assert torch.distributed.is_initialized() and torch.distributed.get_world_size() == 2
    if int(__import__("os").environ.get("RANK", 0)) == 0:
        json.dump(losses, open(out + "/losses.json", "w"))
""")


def test_two_processes_match_one_process_on_the_same_global_batch(setup, tmp_path):
    """torchrun, 2 CPU processes (gloo), micro-batch 2 each == 1 process, micro-batch 2 x 2 accumulation;
    in both, a run resumed from a step checkpoint repeats the uninterrupted one."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER.replace("MICRO", "2"))
    args = [str(setup[k]) for k in ("vision", "lm", "records", "images")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for out, launcher in [(tmp_path / "one", [sys.executable]),
                          (tmp_path / "two", [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                              "--master_port", str(29500 + os.getpid() % 1000)])]:
        out.mkdir()
        done = subprocess.run([*launcher, str(script), *args, str(out)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (json.loads((tmp_path / n / "losses.json").read_text()) for n in ("one", "two"))
    assert len(one["0.0 None"]) == 3 and one["0.0 None"][0] != one["0.0 None"][2]
    np.testing.assert_allclose(two["0.0 None"], one["0.0 None"], rtol=0, atol=1e-5)  # (dropout differs per process)
    for losses in (one, two):  # with dropout: each process's RNG stream is restored too
        np.testing.assert_allclose(losses["0.1 latest"], losses["0.1 None"], rtol=0, atol=1e-6)
    state = tmp_path / "two" / "0.1" / "step-000002" / "training_state"
    assert (state / "random_states_0.pkl").exists() and (state / "random_states_1.pkl").exists()  # one per process


def test_backbone_fingerprint_streams_the_weight_files_and_sees_their_last_byte(tmp_path, monkeypatch):
    # A checkpoint's fingerprint hashes its towers' weight files; read whole, a 7B tower's 13 GB would pass
    # through RAM at once. Chunks of 7 bytes must give the hash of the whole bytes, the tail chunk included.
    import hashlib

    import llava_mini.files as files
    from llava_mini.train import backbone_fingerprint

    for name, size in (("vision", 30), ("lm", 23)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(bytes(range(size)))
        (tmp_path / name / "config.json").write_text("{}")
    monkeypatch.setattr(files, "READ_CHUNK_BYTES", 7)
    expected = [hashlib.sha256(b"config.json\0{}model.safetensors\0" + bytes(range(n))).hexdigest()[:16]
                for n in (30, 23)]
    assert backbone_fingerprint(tmp_path / "vision", tmp_path / "lm") == files.fingerprint(expected)
    before = files.file_fingerprint(tmp_path / "lm")
    (tmp_path / "lm" / "model.safetensors").write_bytes(bytes(range(22)) + b"\xff")  # the tail chunk's last byte
    assert files.file_fingerprint(tmp_path / "lm") != before
