"""Benchmark: the LM head on labelled positions only vs full logits (issue 5, "only answer tokens pay
for the vocabulary").

A LlavaMini with random weights (tiny CLIP tower, Llama/Qwen2-shaped LM with a large vocabulary) runs
training steps (forward + backward, LoRA on the LM's linears + trainable projector, like stage 2) on a
batch of B sequences of T tokens (N image tokens + text), a fraction of the text labelled as answers.
Both modes run in one invocation and the script prints their peak memory and step time, and the ratios.

Memory: on CUDA ``torch.cuda.max_memory_allocated`` (above the loaded model); on CPU the peak resident
set size above the loaded model (``resource.getrusage``), each mode in its own subprocess because the
process peak never goes down.

    python scripts/bench_lm_head.py                       # CPU defaults: 32K vocab, small LM
    python scripts/bench_lm_head.py --preset qwen0.5b     # Qwen2.5-0.5B shape, 152K vocab (GPU)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PRESETS = {
    # Small Llama-shaped LM for a 2-core CPU.
    "cpu": dict(arch="llama", vocab=32000, hidden=256, layers=2, heads=4, kv_heads=4, intermediate=688, tied=False),
    # Qwen2.5-0.5B's shape (the design's anchor): 152K vocabulary, tied embeddings.
    "qwen0.5b": dict(arch="qwen2", vocab=151936, hidden=896, layers=24, heads=14, kv_heads=2, intermediate=4864,
                     tied=True),
}


def build_model(spec: dict, args, device: str, dtype: torch.dtype):
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from llava_mini.model import LlavaMini

    torch.manual_seed(0)
    torch.set_default_device(device)  # initialise the random weights where they will run (fast on a GPU)
    side = args.image_patches_side * 14
    vision = CLIPVisionModel(CLIPVisionConfig(image_size=side, patch_size=14, hidden_size=256, intermediate_size=512,
                                              num_hidden_layers=2, num_attention_heads=4))
    config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if spec["arch"] == "qwen2" else (LlamaConfig, LlamaForCausalLM)
    lm_config = config_class(vocab_size=spec["vocab"], hidden_size=spec["hidden"], num_hidden_layers=spec["layers"],
                             num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
                             intermediate_size=spec["intermediate"], tie_word_embeddings=spec["tied"],
                             max_position_embeddings=4096)
    lm_config._attn_implementation = "sdpa"
    lm = model_class(lm_config)
    model = LlavaMini(vision, lm, image_token_id=spec["vocab"] - 1).to(device=device, dtype=dtype)
    torch.set_default_device("cpu")
    model.vision_tower.requires_grad_(False)
    if args.lora:
        from peft import LoraConfig, get_peft_model

        targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
        model = get_peft_model(model, LoraConfig(r=args.lora, lora_alpha=2 * args.lora, target_modules=targets))
        model.base_model.model.projector.requires_grad_(True)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model


def make_batch(spec: dict, args, n_image: int, device: str, dtype: torch.dtype):
    """B sequences: [text prefix][N image tokens][question][answer (labelled)], right-aligned lengths all T."""
    g = torch.Generator().manual_seed(1)
    B, T = args.batch, args.seq
    input_ids = torch.randint(0, spec["vocab"] - 2, (B, T), generator=g)
    input_ids[:, 4:4 + n_image] = spec["vocab"] - 1  # the image token
    labels = torch.full((B, T), -100)
    n_text = T - n_image
    n_answer = int(n_text * args.labelled)
    labels[:, T - n_answer:] = input_ids[:, T - n_answer:]
    side = args.image_patches_side * 14
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones(B, T, dtype=torch.long, device=device),
        "labels": labels.to(device),
        "pixel_values": torch.randn(B, 3, side, side, generator=g).to(device, dtype),
    }


def run_mode(spec: dict, args, labelled_only: bool) -> dict:
    """Build, then time `steps` forward+backward steps after `warmup`; memory above the loaded model."""
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    model = build_model(spec, args, device, dtype)
    batch = make_batch(spec, args, args.image_patches_side ** 2, device, dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        loss = model(**batch, labelled_only=labelled_only).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated()
        peak_above = peak - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        peak_above = peak - base
    return {
        "labelled_only": labelled_only, "device": device, "loss": float(loss.detach()),
        "step_s": sorted(times)[len(times) // 2], "peak_bytes": peak, "peak_above_model_bytes": peak_above,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="LM shape (default: qwen0.5b on CUDA, cpu otherwise)")
    parser.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=320, help="tokens per sequence, image tokens included")
    parser.add_argument("--image-patches-side", type=int, default=8, help="image tokens = side^2 (default 64)")
    parser.add_argument("--labelled", type=float, default=0.3, help="fraction of text tokens that are answers")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--lora", type=int, default=16, help="LoRA rank on the LM (0: train the whole LM)")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for CUDA, off on CPU")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help="use the CPU even when CUDA is there")
    parser.add_argument("--_child", choices=["labelled", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()

    cuda = torch.cuda.is_available() and not args.cpu
    args.preset = args.preset or ("qwen0.5b" if cuda else "cpu")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = cuda
    spec = dict(PRESETS[args.preset])
    if args.vocab:
        spec["vocab"] = args.vocab

    if args._child:  # one CPU mode in a fresh process
        print(json.dumps(run_mode(spec, args, args._child == "labelled")))
        return
    if cuda:
        results = [run_mode(spec, args, labelled_only) for labelled_only in (True, False)]
    else:
        results = []
        for mode in ("labelled", "full"):
            command = [sys.executable, __file__, *sys.argv[1:], "--_child", mode]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))

    fast, full = results
    n_image = args.image_patches_side ** 2
    n_answer = int((args.seq - n_image) * args.labelled)
    gib = 2 ** 30
    print(f"device: {fast['device_name']}  torch {torch.__version__}")
    print(f"LM {args.preset} (vocab {spec['vocab']}, hidden {spec['hidden']}, {spec['layers']} layers), {args.dtype}, "
          f"LoRA r={args.lora}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"batch {args.batch} x {args.seq} tokens ({n_image} image, {n_answer} labelled answer tokens per sequence)")
    memory_name = "peak GPU memory allocated" if cuda else "peak RSS"
    for name, r in (("labelled-only head", fast), ("full logits", full)):
        print(f"  {name:<19} loss {r['loss']:.4f}  step {r['step_s']:.3f} s  {memory_name} "
              f"{r['peak_bytes'] / gib:.2f} GiB ({r['peak_above_model_bytes'] / gib:.2f} GiB above the loaded model)")
    print(f"full / labelled-only: peak memory x{full['peak_bytes'] / fast['peak_bytes']:.2f} "
          f"(above the model x{full['peak_above_model_bytes'] / max(fast['peak_above_model_bytes'], 1):.2f}), "
          f"step time x{full['step_s'] / fast['step_s']:.2f}")


if __name__ == "__main__":
    main()
