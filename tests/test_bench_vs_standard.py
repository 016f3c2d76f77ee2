"""scripts/bench_vs_standard.py: it runs end to end at toy size (so it cannot rot), both routes train on the
same batches with the same losses, and its shape files hold the public shapes they name. No timing asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import stand_ins

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vs_standard.py"


@pytest.fixture(scope="module")
def bench():
    return stand_ins.load_script("bench_vs_standard")


def test_toy_run_writes_both_routes_with_matching_losses(tmp_path):
    out = tmp_path / "bench.json"
    # one thread: on a busy 2-core machine two threads per process spin-wait each other
    # one variant of ours: the head in chunks of 4 rows (4 x 512 logits), each image's features computed once,
    # freed tensors of 64 KiB or more returned to the system; an allocator setting both routes inherit
    subprocess.run([sys.executable, str(SCRIPT), "--shape", "toy", "--steps", "2", "--threads", "1", "--cpu",
                    "--image-reuse", "2", "--variant",
                    "loss_chunk_logits=2048,cache_image_features=true,host_mmap_threshold=65536",
                    "--out", str(out)], check=True, capture_output=True, text=True,
                   env={**os.environ, "THP_MEM_ALLOC_ENABLE": "1"})
    report = json.loads(out.read_text())
    assert report["environment"]["THP_MEM_ALLOC_ENABLE"] == "1"
    assert [run["gradient_checkpointing"] for run in report["runs"]] == [False, True]
    assert report["settings"]["precision"] == "fp32" and report["settings"]["lora_dropout"] > 0
    sdpa = {"vision": "sdpa", "lm": "sdpa"}  # the default kernel of both towers, on both routes
    assert report["settings"]["attention"] == {"ours": sdpa, "standard": sdpa}
    for run in report["runs"]:
        ours, standard = run["ours"], run["standard"]
        for route in (ours, standard):
            assert route["tokens_per_s"] > 0 and route["peak_memory_bytes"] > 0
            assert len(route["losses"]) == len(route["step_seconds"]) == 2
        assert ours["steps"] == standard["steps"] and ours["steps"][0]["tokens"] > 0
        assert ours["trainable_parameters"] == standard["trainable_parameters"] > 0
        # a random LM over 512 tokens starts near ln(512) = 6.2; the routes agree far below the tolerance
        assert 5.0 < ours["losses"][0] < 7.5
        assert ours["losses"] == pytest.approx(standard["losses"], abs=1e-4)
        assert run["max_loss_difference"] <= report["tolerance"]
        (variant,) = run["variants"]
        assert variant["changes"] == {"loss_chunk_logits": 2048, "cache_image_features": True,
                                      "host_mmap_threshold": 65536}
        assert variant["ours"]["steps"] == ours["steps"] and variant["speed_vs_ours"] > 0
        assert variant["ours"]["losses"] == pytest.approx(standard["losses"], abs=1e-4)
    assert set(report["versions"]) >= {"torch", "transformers", "peft"} and report["machine"]["cpu_count"] > 0


@pytest.mark.parametrize("name, image_tokens, lm_parameters", [
    ("tiny", 64, None),
    ("colab", 196, 494_032_768),    # Qwen2.5-0.5B (tied embeddings)
    ("paper", 576, 6_738_415_616),  # Llama-2-7B / Vicuna-7B
])
def test_shape_files_hold_the_public_shapes(bench, name, image_tokens, lm_parameters):
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = bench.load_shape(name)
    vision = AutoConfig.for_model(**shape["vision"])
    assert (vision.image_size // vision.patch_size) ** 2 == image_tokens
    if lm_parameters:
        with torch.device("meta"):  # shapes only, no memory
            lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shape["lm"]))
        assert sum(p.numel() for p in lm.parameters()) == lm_parameters


def test_layers_cut_both_towers_and_bad_shapes_are_named(bench, tmp_path):
    shape = bench.load_shape("paper", layers=3)
    assert shape["vision"]["num_hidden_layers"] == shape["lm"]["num_hidden_layers"] == 3
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"preset": "tiny", "vision": {}, "lm": {}}))
    with pytest.raises(SystemExit, match="bad.json: missing keys"):
        bench.load_shape(str(bad))
    with pytest.raises(SystemExit, match="no such shape file"):
        bench.load_shape("nonexistent")


def test_variants_parse_as_json_and_name_what_they_cannot_change(bench):
    assert bench.parse_variant("loss_chunk_logits=null,checkpoint_every=2,precision=bf16") == {
        "loss_chunk_logits": None, "checkpoint_every": 2, "precision": "bf16"}
    with pytest.raises(SystemExit, match="TrainConfig has no"):
        bench.parse_variant("loss_chunk=1")
    with pytest.raises(SystemExit, match="set by the benchmark"):
        bench.parse_variant("gradient_checkpointing=true")


def test_compare_refuses_runs_on_different_batches_or_targets(bench):
    route = {"steps": [{"tokens": 10}], "trainable_parameters": 5, "losses": [1.0], "step_seconds": [1.0],
             "peak_memory_bytes": 1}
    assert bench.compare(route, dict(route, losses=[1.5]), False)["max_loss_difference"] == 0.5
    with pytest.raises(SystemExit, match="different batches"):
        bench.compare(route, dict(route, steps=[{"tokens": 11}]), False)
    with pytest.raises(SystemExit, match="trainable parameters differ"):
        bench.compare(route, dict(route, trainable_parameters=6), False)
