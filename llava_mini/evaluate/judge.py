"""An LLM judge (LLaVA-Bench's protocol): a text-only LLM, told the image's symbolic description, rates the
reference answer and the model's answer."""

import random
import re
import sys
from typing import Sequence

from tqdm.auto import tqdm

from llava_mini.evaluate.questions import KINDS
from llava_mini.teacher import SymbolicTeacher, TeacherError, TeacherFatalError, build_messages, teacher_from_env
from llava_mini.world import ImageRecord, context_text

JUDGE_SYSTEM = "You are a careful and fair reviewer of answers that AI assistants give about images."
JUDGE_RUBRIC = (
    "Two AI assistants answered the question above about an image that you cannot see; the description of the image "
    "is what you know about it. Judge how helpful, relevant and accurate each answer is, and whether its level of "
    "detail suits the question. Give each assistant an overall score from 1 to 10, where a higher score is better.\n"
    "On the first line write only the two scores, Assistant 1's then Assistant 2's, separated by a space. From the "
    "next line on, explain your judgement briefly and without bias; the order in which the answers appear must not "
    "affect it."
)


def judge_messages(question: str, context: str, reference: str, answer: str) -> list[dict[str, str]]:
    """The judge's prompt: the symbolic context, the question, the reference answer as Assistant 1 and
    the model's answer as Assistant 2 (LLaVA-Bench's order), then the scoring instructions."""
    user = (f"[Image description]\n{context.strip()}\n\n[Question]\n{question.strip()}\n\n"
            f"[Assistant 1]\n{reference.strip()}\n[End of Assistant 1]\n\n"
            f"[Assistant 2]\n{answer.strip() or '(no answer)'}\n[End of Assistant 2]\n\n[Instructions]\n{JUDGE_RUBRIC}")
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def parse_judge_scores(text: str) -> tuple[float, float] | None:
    """The two scores on the review's first line ("8 6", "8, 6", "Scores: 8/10 6/10"), or None."""
    first = (text or "").strip().split("\n", 1)[0]
    numbers = [float(v) for v in re.findall(r"\d+(?:\.\d+)?", re.sub(r"/\s*10\b", " ", first))]
    return (numbers[0], numbers[1]) if len(numbers) == 2 and all(0 <= v <= 10 for v in numbers) else None


def judge_items(result: dict, records: Sequence[ImageRecord], max_per_kind: int = 10, seed: int = 0,
                detail_reference: bool = True, reference=None) -> list[dict]:
    """Items for ``judge_answers`` from an ``evaluate_model`` result: up to ``max_per_kind`` answers of each kind
    (reference: the ground-truth sentence) and descriptions ("detail"; reference: what ``reference``, default the
    symbolic teacher, writes told the scene as text, as LLaVA-Bench's text-only GPT-4 did)."""
    context = {r.image_id: context_text(r, boxes=True) for r in records}
    rng = random.Random(f"{seed}:judge")
    items = []
    for kind in KINDS:
        rows = [a for a in result["answers"] if a["kind"] == kind]
        items += [{"kind": kind, "question": a["question"], "reference": a["reference"], "answer": a["answer"],
                   "context": context[a["image_id"]], "image_id": a["image_id"]}
                  for a in rng.sample(rows, min(max_per_kind, len(rows)))]
    if detail_reference and result.get("description"):
        teacher = reference or SymbolicTeacher(seed)
        items += [{"kind": "detail", "question": d["instruction"], "answer": d["description"],
                   "reference": teacher.complete(build_messages("detail", context[d["image_id"]])),
                   "context": context[d["image_id"]], "image_id": d["image_id"]}
                  for d in result["description"]["items"][:max_per_kind]]
    return items


def judge_answers(items: Sequence[dict], judge=None, max_items: int | None = None,
                  progress: bool = False) -> dict | None:
    """LLaVA-Bench's relative score: a judge LLM rates the reference's and the model's answer 1-10; relative
    score = model's total / reference's total (%), overall and per kind. ``judge``: anything with ``complete(
    messages) -> str`` (default ``teacher.teacher_from_env()``); without one, prints why and returns None.
    Reviews without two scores on the first line count as "unparsed", failed calls as "failed"; both left out."""
    judge = teacher_from_env() if judge is None else judge
    if judge is None:
        print("LLM judge skipped: no judge configured (set LLAVA_MINI_TEACHER_API_KEY or OPENAI_API_KEY, "
              "or LLAVA_MINI_TEACHER_BASE_URL for a local server, and LLAVA_MINI_TEACHER_MODEL)", file=sys.stderr)
        return None
    items = tqdm(list(items)[:max_items], desc="judging", disable=not progress)
    reviews, scored, failed = [], [], 0  # scored: (kind, reference's score, model's score)
    for item in items:
        try:
            text = judge.complete(judge_messages(item["question"], item["context"], item["reference"], item["answer"]))
        except TeacherFatalError:
            raise
        except TeacherError:
            failed += 1
            continue
        scores = parse_judge_scores(text)
        reviews.append({**{k: item.get(k) for k in ("kind", "image_id", "question")}, "scores": scores, "review": text})
        if scores is not None:
            scored.append((item.get("kind", "other"), *scores))

    def relative(rows) -> float | None:  # the model's total over the reference's, in %
        reference = sum(r for _, r, _ in rows)
        return 100 * sum(m for _, _, m in rows) / reference if reference else None

    n = len(scored)
    return {"relative_score": relative(scored), "reference_score": sum(r for _, r, _ in scored) / n if n else None,
            "model_score": sum(m for _, _, m in scored) / n if n else None,
            "by_kind": {k: relative([s for s in scored if s[0] == k]) for k in dict.fromkeys(s[0] for s in scored)},
            "judged": n, "unparsed": len(reviews) - n, "failed": failed,
            "judge": getattr(judge, "identity", type(judge).__name__), "reviews": reviews}
