"""How long the shapes world takes to generate: 5,000 images (sampling, drawing, PNG files, COCO JSON)
on one core. Prints numbers; asserts nothing.

    python scripts/bench_world.py [--images 5000]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

# One core: pin BLAS/OpenMP threads before numpy loads, and the process itself where the OS allows.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

from llava_mini.world import WorldConfig, generate_world, render_scene, scene_with_captions  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    config = WorldConfig()
    n = args.images
    t0 = time.perf_counter()
    scenes = [scene_with_captions(args.seed, "train", i, config) for i in range(n)]
    t_sample = time.perf_counter() - t0
    t0 = time.perf_counter()
    for scene, _ in scenes:
        render_scene(scene, config)
    t_render = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_world(tmp, {"train": n}, seed=args.seed, config=config)
        t_total = time.perf_counter() - t0

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, pinned to one core")
    print(f"images: {n} at {config.image_size} px")
    print(f"scenes + captions: {t_sample:6.2f} s")
    print(f"drawing:           {t_render:6.2f} s")
    print(f"generate_world:    {t_total:6.2f} s  ({1000 * t_total / n:.2f} ms/image, incl. PNG + JSON)")


if __name__ == "__main__":
    main()
