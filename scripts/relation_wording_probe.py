"""Probe: does the wording of a relation question change the text reference's answer?

Every held-out relation question of the course world's val split is asked again in each wording of its axis
(``evaluate.questions``: three for left/right, three for above/below), about the same two objects, to the LM
*told* the scene as text (``evaluate_text_scene``). Prints accuracy per wording and how many wrong answers
name only the opposite verdict (the objects' roles swapped), and writes them to --out.

    python scripts/relation_wording_probe.py [--images 300] [--out docs/results/relation_wording_probe.json]
"""

import argparse
import json
import re
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def wording_pattern(template: str) -> re.Pattern:
    """"Is the {a} left of the {b}?" -> a regex that gives a and b back."""
    return re.compile("^" + re.escape(template).replace(r"\{a\}", "(?P<a>.+?)").replace(r"\{b\}", "(?P<b>.+?)") + "$")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", default=str(ROOT / "data" / "backbones" / "lm"))
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "relation_wording_probe.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llava_mini.course import course_world
    from llava_mini.evaluate import evaluate_text_scene, make_questions
    from llava_mini.evaluate.matching import extract_answer
    from llava_mini.evaluate.questions import _HORIZONTAL_QS, _VERTICAL_QS
    from llava_mini.world import read_split

    torch.set_grad_enabled(False)
    lm = AutoModelForCausalLM.from_pretrained(args.lm).eval()
    tokenizer = AutoTokenizer.from_pretrained(Path(args.lm).parent / "tokenizer")
    records = read_split(course_world(), args.split).records[: args.images]
    asked = [q for q in make_questions(records, seed=0) if q.kind == "relation"]
    axes = [[(t, wording_pattern(t)) for t in templates] for templates in (_HORIZONTAL_QS, _VERTICAL_QS)]
    variants = []  # (index of the original question, wording, whether it is the wording the eval drew)
    questions = []
    for i, q in enumerate(asked):
        axis, match = next((axis, m) for axis in axes for _, p in axis if (m := p.match(q.question)))
        for template, _ in axis:
            text = template.format(a=match["a"], b=match["b"])
            questions.append(replace(q, question=text))
            variants.append((i, template, text == q.question))
    rows = evaluate_text_scene(lm, tokenizer, records, questions)["answers"]
    by_wording = {}
    for (i, template, original), row in zip(variants, rows):
        swapped = extract_answer("relation", row["answer"]) == OPPOSITE[row["expected"]]  # the matcher's reading
        entry = by_wording.setdefault(template, {"asked": 0, "right": 0, "opposite_verdict": 0, "drawn_by_eval": 0})
        entry["asked"] += 1
        entry["right"] += bool(row["correct"])
        entry["opposite_verdict"] += bool(swapped)
        entry["drawn_by_eval"] += original
    for template, e in by_wording.items():
        e["accuracy"] = e["right"] / e["asked"]
        print(f"{e['accuracy']:6.1%} of {e['asked']:3}  wrong {e['asked'] - e['right']:3} (opposite verdict "
              f"{e['opposite_verdict']:3})  {template}")
    out = {"lm": args.lm, "split": args.split, "images": args.images, "relation_questions": len(asked),
           "by_wording": by_wording}
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
