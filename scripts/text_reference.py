"""The text reference: the stand-in LM answering the held-out questions when it is *told* each scene as text
(captions + boxes where the image would be). It is the offline form of the paper's text-only GPT-4 reference,
and the denominator of the relative score. Prints accuracy per kind on the course world's val and test splits
and on a freshly drawn world (another seed), and writes them to --out.

    python scripts/text_reference.py [--lm data/backbones/lm] [--images 300] [--fresh-seed 1]
"""

import argparse
import json
import time
from pathlib import Path

from llava_mini.config import ANSWER_TOKENS

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default=str(ROOT / "data" / "backbones" / "lm"))
    parser.add_argument("--tokenizer", help="default: the LM folder's sibling tokenizer/")
    parser.add_argument("--images", type=int, default=300, help="images per split (one question of each kind each)")
    parser.add_argument("--splits", default="val,test")
    parser.add_argument("--fresh-seed", type=int, default=1, help="the seed of a freshly drawn world; -1: none")
    parser.add_argument("--max-new-tokens", type=int, default=ANSWER_TOKENS)
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "text_reference.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llava_mini.course import course_world
    from llava_mini import evaluate
    from llava_mini.evaluate import evaluate_text_scene, make_questions
    from llava_mini.paths import work_dir
    from llava_mini.world import generate_world, read_split

    torch.set_grad_enabled(False)
    lm = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or Path(args.lm).parent / "tokenizer")
    worlds = {split: (course_world(), split) for split in args.splits.split(",")}
    if args.fresh_seed >= 0:
        fresh = work_dir() / f"world_fresh_seed{args.fresh_seed}"
        generate_world(fresh, {"test": args.images}, seed=args.fresh_seed)
        worlds[f"fresh world (seed {args.fresh_seed}) test"] = (fresh, "test")
    results = {}
    for name, (root, split) in worlds.items():
        t0, records = time.time(), read_split(root, split).records[: args.images]
        r = evaluate_text_scene(lm, tokenizer, records, make_questions(records, seed=0),
                                max_new_tokens=args.max_new_tokens)
        lenient = evaluate.accuracy_by_kind(r["answers"], "correct_lenient")
        results[name] = {**{k: r[k] for k in ("accuracy", "n", "micro", "macro")}, "lenient_micro": lenient["micro"]}
        kinds = " ".join(f"{k} {v:.1%}" for k, v in r["accuracy"].items())
        print(f"{name:>28}: micro {r['micro']:.1%} | {kinds} | {len(r['answers'])} questions "
              f"(earlier lenient rule: {lenient['micro']:.1%}), {time.time() - t0:.0f} s")
        wrong = [a for a in r["answers"] if not a["correct"]][:3]
        for a in wrong:
            print(f"{'':>30}wrong ({a['kind']}): {a['question']} -> {a['answer']!r} (expected {a['expected']})")
    out = {"lm": str(args.lm), "images_per_split": args.images, "max_new_tokens": args.max_new_tokens,
           "matcher": "strict", "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
