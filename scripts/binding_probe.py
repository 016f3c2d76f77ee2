"""Can the frozen patch tokens answer a *binding* question with one attention read?

    python scripts/binding_probe.py [--train-images 3000] [--test-images 500] [--steps 500]

"What colour is the star?" needs the star's patches found and their colour read. llava_mini.binding
trains one softmax attention + a linear read-out on the frozen vision tower's layer -2 patch tokens (the
ones the LM reads) in both directions (colour-by-shape, shape-by-colour) and prints held-out accuracy.
Near 100% means the vision tower is not what limits those questions (see README, "Results").
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-images", type=int, default=3000)
    parser.add_argument("--test-images", type=int, default=500)
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()

    from llava_mini.evaluate import binding_probe
    from llava_mini.world import read_split
    from llava_mini.model import load_vision_tower
    from llava_mini.config import get_preset
    from llava_mini.course import load_processors, course_world

    spec = get_preset("tiny")
    _, processor = load_processors(spec)
    tower = load_vision_tower(spec.model.vision).eval()
    root = course_world(seed=0)
    start = time.time()
    results = binding_probe(tower, processor, read_split(root, "train").records[:args.train_images],
                            root / "images" / "train", read_split(root, "test").records[:args.test_images],
                            root / "images" / "test", steps=args.steps)
    print(f"{args.train_images} train / {args.test_images} held-out images, {args.steps} steps of batch 128, "
          f"{time.time() - start:.0f} s")
    for name, r in results.items():
        print(f"{name}: held-out {r.accuracy:.1%} of {r.questions} questions, {r.with_distractor:.1%} where the "
              f"image offers a wrong answer; >= 95% after {r.steps_to_95} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
