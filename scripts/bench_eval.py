"""Benchmark: notebook 04's held-out questions answered in question order against kind by kind
(``evaluate.kind_by_kind``), with the course's LoRA checkpoint; prints both times, their ratio and how many
answers agree (greedy decoding: they should all).

    python scripts/bench_eval.py [--images 150] [--per-kind 40] [--repeats 2]

A batch of generation runs until its longest reply ends, and the kinds differ most in length (a relation answer
quotes two box lines, ~60 tokens; a count is five words), so batches of one kind finish sooner.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llava_mini import course, evaluate  # noqa: E402
from llava_mini.model import load_image  # noqa: E402
from llava_mini.world import read_split  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--per-kind", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    model, tokenizer, image_processor = course.course_model("lora", progress=False)
    records = read_split(course.course_world(0), "test").records[:args.images]
    questions = evaluate.make_questions(records, seed=0, max_per_kind=args.per_kind)
    by_id = {r.image_id: r for r in records}
    images = {i: load_image(by_id[i].path, i) for i in {q.image_id for q in questions}}
    items = [(images[q.image_id], q.question) for q in questions]

    def answer(order):
        return evaluate.generate_answers(model, tokenizer, image_processor, [items[k] for k in order])

    for _ in range(args.repeats):
        start = time.perf_counter()
        mixed = answer(range(len(items)))
        middle = time.perf_counter()
        grouped = evaluate.kind_by_kind(questions, answer)
        end = time.perf_counter()
        same = sum(a == b for a, b in zip(mixed, grouped))
        print(f"{len(items)} questions: in question order {middle - start:.1f} s, kind by kind {end - middle:.1f} s "
              f"({(middle - start) / (end - middle):.2f}x); same answers {same}/{len(items)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
