"""The model on the held-out set: questions --greedy answers (``model.generate_ids``)--> matching --> accuracy
per kind; "Describe the image in detail." --> mentioned objects --> recall, CHAIR. The blind baseline sees a
blank canvas instead of each image (same prompts, no visual information): what it gets right comes from the
language prior ("yes" to every existence question...), and ``gap_closed`` is the share of the rest a model closes.
"""

import random
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from PIL import Image

from llava_mini.config import ANSWER_TOKENS
from llava_mini.evaluate.descriptions import description_metrics, score_coco_description, score_description
from llava_mini.evaluate.judge import judge_answers, judge_items
from llava_mini.evaluate.matching import extract_answer, is_correct, is_correct_lenient
from llava_mini.evaluate.questions import KINDS, Question, make_questions, scene_objects
from llava_mini.model import build_prompt, decode, generate_ids, image_to_pixel_values, load_image, mean_colour
from llava_mini.model import render_ids
from llava_mini.teacher import DETAILED_INSTRUCTIONS, TeacherError, teacher_from_env
from llava_mini.train import unwrap
from llava_mini.world import ImageRecord, context_text


def blank_image(image_processor, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A canvas of the processor's mean colour: what the blind baseline sees instead of each image."""
    return Image.new("RGB", size, mean_colour(image_processor))


def prepare_images(images: Sequence[Image.Image], image_processor, blind: bool = False) -> torch.Tensor:
    """PIL images -> pixel_values (B, 3, H, W), padded to squares like training (``blind``: blank canvases)."""
    if blind:
        images = [blank_image(image_processor, im.size) for im in images]
    return torch.stack([image_to_pixel_values(im, image_processor) for im in images])


def generate_answers(model, tokenizer, image_processor, items: Sequence[tuple[Image.Image, str]], batch_size: int = 32,
                     max_new_tokens: int = 24, system_prompt: str | None = None, blind: bool = False,
                     progress: bool = False, desc: str = "answering") -> list[str]:
    """Greedy answers to (image, question) pairs, in order, the same as ``chat`` gives. Questions about one image
    (adjacent in ``make_questions``) share a batch, where each distinct image (by identity) is encoded once."""
    base = unwrap(model)
    prompts = [build_prompt(tokenizer, q, base.num_image_tokens, system_prompt=system_prompt) for _, q in items]
    ids = generate_ids(base, tokenizer, prompts, images=[image for image, _ in items],
                       to_pixels=lambda images: prepare_images(images, image_processor, blind),
                       max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, desc=desc)
    return [decode(tokenizer, row) for row in ids]


def chat(model, tokenizer, image_processor, image, question: str, history: Iterable[tuple[str, str]] = (),
         system_prompt: str | None = None, max_new_tokens: int = ANSWER_TOKENS, blind: bool = False) -> str:
    """One greedy answer about ``image`` (a PIL image or a path), after earlier (question, answer) turns."""
    image = image if isinstance(image, Image.Image) else load_image(image, str(image))
    base = unwrap(model)
    prompt = build_prompt(tokenizer, question, base.num_image_tokens, system_prompt=system_prompt, history=history)
    (ids,) = generate_ids(base, tokenizer, [prompt], pixel_values=prepare_images([image], image_processor, blind),
                          max_new_tokens=max_new_tokens)
    return decode(tokenizer, ids)


def kind_by_kind(questions: Sequence[Question], answer) -> list:
    """``answer(order) -> replies`` for the question indices ``order``, the questions sorted by kind (stably); the
    replies come back in the order of ``questions``. A batch waits for its longest reply, and kinds differ most in
    length: a relation answer walks down the box lines twice (up to ~90 tokens), a count is five words."""
    order = sorted(range(len(questions)), key=lambda k: questions[k].kind)
    replies = [None] * len(questions)
    for k, reply in zip(order, answer(order), strict=True):
        replies[k] = reply
    return replies


def score_answers(questions: Sequence[Question], replies: Sequence[str]) -> list[dict]:
    """One row per question: what was asked, expected, answered, the extracted term and whether it is right."""
    return [{"image_id": q.image_id, "kind": q.kind, "question": q.question, "expected": q.expected,
             "reference": q.reference, "answer": reply, "extracted": extract_answer(q.kind, reply),
             "correct": is_correct(q.kind, reply, q.expected),
             "correct_lenient": is_correct_lenient(q.kind, reply, q.expected)} for q, reply in zip(questions, replies, strict=True)]


def accuracy_by_kind(answers: Sequence[dict], correct: str = "correct") -> dict:
    """Rows with "kind" and ``correct`` ("correct": strict, "correct_lenient": the earlier first-term rule) ->
    {"accuracy": {kind: share}, "n": {kind: count}, "micro", "macro"}."""
    n, right = Counter(a["kind"] for a in answers), Counter(a["kind"] for a in answers if a[correct])
    kinds = [k for k in KINDS if n[k]] + sorted(k for k in n if k not in KINDS)
    accuracy = {k: right[k] / n[k] for k in kinds}
    return {"accuracy": accuracy, "n": {k: n[k] for k in kinds},
            "micro": sum(right.values()) / sum(n.values()) if n else None,
            "macro": sum(accuracy.values()) / len(accuracy) if accuracy else None}


def _records_by_id(records: Sequence[ImageRecord], questions: Sequence[Question]) -> dict[int, ImageRecord]:
    by_id = {r.image_id: r for r in records}
    missing = sorted({q.image_id for q in questions} - set(by_id))
    if missing:
        raise ValueError(f"questions about images {missing[:5]}, which are not among the records given")
    return by_id


def evaluate_text_scene(language_model, tokenizer, records: Sequence[ImageRecord], questions: Sequence[Question],
                        boxes: bool = True, system_prompt: str | None = None, batch_size: int = 32,
                        max_new_tokens: int = ANSWER_TOKENS) -> dict:
    """The questions answered by the LM alone, *told* the scene: each image's symbolic context (captions, and
    boxes if ``boxes``) stands where the image tokens would. A kind the LM cannot answer even from this perfect
    view is limited by what the LM has learned, not by the vision tower. Returns what ``evaluate_model`` does."""
    by_id = _records_by_id(records, questions)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    told = [[*system, {"role": "user", "content": f"{context_text(by_id[q.image_id], boxes=boxes)}\n{q.question}"}]
            for q in questions]
    prompts = [torch.tensor(render_ids(tokenizer, messages, add_generation_prompt=True)) for messages in told]
    ids = kind_by_kind(questions, lambda order: generate_ids(language_model, tokenizer, [prompts[k] for k in order],
                                                             max_new_tokens=max_new_tokens, batch_size=batch_size))
    rows = score_answers(questions, [decode(tokenizer, row) for row in ids])
    settings = dict(text_scene=True, boxes=boxes, system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                    images=len(by_id), questions=len(questions))
    return {**accuracy_by_kind(rows), "answers": rows, "blind": False, "settings": settings, "description": None}


def evaluate_model(model, tokenizer, image_processor, records: Sequence[ImageRecord],
                   image_dir: str | Path | None = None, questions: Sequence[Question] | None = None, seed: int = 0,
                   per_kind: int = 1, max_per_kind: int | None = None, blind: bool = False, batch_size: int = 32,
                   max_new_tokens: int = ANSWER_TOKENS, n_descriptions: int | None = 50, description_max_new_tokens: int = 160,
                   system_prompt: str | None = None, progress: bool = False) -> dict:
    """Answer the held-out questions and describe held-out images (``read_split(root, "test")``); score both.

    ``image_dir``: the images' folder (default: each record's ``path``). ``questions``: a fixed set (default
    ``make_questions(records, seed, per_kind, max_per_kind)``): pass the same list to every model you compare.
    ``n_descriptions``: how many images (the first ones) to describe (0: none, None: all). Returns accuracy_by_kind
    + {"answers": score_answers rows, "description": description_metrics + "items" or None, "blind", "settings"}."""
    records = list(records)
    if questions is None:
        questions = make_questions(records, seed=seed, per_kind=per_kind, max_per_kind=max_per_kind)
    by_id = _records_by_id(records, questions)
    described = records if n_descriptions is None else records[:n_descriptions]
    # One object per image, so generate_answers sends it through the vision tower once per batch it is in.
    images = {i: load_image(Path(image_dir) / by_id[i].file_name if image_dir is not None else by_id[i].path, i)
              for i in dict.fromkeys([q.image_id for q in questions] + [r.image_id for r in described])}
    settings = dict(blind=blind, seed=seed, per_kind=per_kind, max_per_kind=max_per_kind, max_new_tokens=max_new_tokens,
                    system_prompt=system_prompt, images=len(records), questions=len(questions))
    common = dict(batch_size=batch_size, system_prompt=system_prompt, blind=blind, progress=progress)
    items = [(images[q.image_id], q.question) for q in questions]
    replies = kind_by_kind(questions, lambda order: generate_answers(
        model, tokenizer, image_processor, [items[k] for k in order], max_new_tokens=max_new_tokens,
        desc="questions", **common))
    rows = score_answers(questions, replies)
    result = {**accuracy_by_kind(rows), "answers": rows, "blind": blind, "settings": settings, "description": None}

    if described:
        result["description"] = describe_images(
            model, tokenizer, image_processor, described, images, lambda text, r: score_description(text, scene_objects(r)),
            seed, description_max_new_tokens, **common)
        settings["description_max_new_tokens"] = description_max_new_tokens
    return result


def describe_images(model, tokenizer, image_processor, records: Sequence[ImageRecord], images: dict, score,
                    seed: int = 0, max_new_tokens: int = 160, **common) -> dict:
    """Each record's image (``images``: image id -> PIL image) described on a seeded detailed-description
    instruction and scored by ``score(text, record)`` (a ``score_description`` dict): description_metrics + "items"."""
    rng = random.Random(f"{seed}:describe")
    instructions = [rng.choice(DETAILED_INSTRUCTIONS) for _ in records]
    texts = generate_answers(model, tokenizer, image_processor,
                             [(images[r.image_id], ins) for r, ins in zip(records, instructions)],
                             max_new_tokens=max_new_tokens, desc="descriptions", **common)
    scores = [score(t, r) for t, r in zip(texts, records)]
    return {**description_metrics(scores), "items": [{"image_id": r.image_id, "instruction": ins, "description": t, **s}
                                                     for r, ins, t, s in zip(records, instructions, texts, scores)]}


def evaluate_coco(model, tokenizer, image_processor, records: Sequence[ImageRecord], n_descriptions: int = 100,
                  seed: int = 0, judge=None, max_new_tokens: int = 160, batch_size: int = 16,
                  system_prompt: str | None = None, progress: bool = False) -> dict:
    """Notebook 04 on held-out COCO images (``course.coco_subsets(preset)["test"]``): the first ``n_descriptions``
    described and scored with CHAIR over COCO's object names (``score_coco_description``), then rated by the LLM
    judge where one is configured (``judge``, default ``teacher_from_env()``), which also writes the reference
    descriptions. Returns {"description": description_metrics + "items", "judge": judge_answers or None}."""
    described = list(records)[:n_descriptions]
    images = {r.image_id: r.load_image() for r in described}
    description = describe_images(model, tokenizer, image_processor, described, images, score_coco_description, seed,
                                  max_new_tokens, batch_size=batch_size, system_prompt=system_prompt, progress=progress)
    judge = teacher_from_env() if judge is None else judge
    try:  # no judge: judge_answers says so and gives None; a judge that fails must not cost the CHAIR numbers
        items = judge_items({"answers": [], "description": description}, described, len(described), seed,
                            reference=judge) if judge is not None else []
        return {"description": description, "judge": judge_answers(items, judge)}
    except TeacherError as e:
        print(f"LLM judge failed: {e}", file=sys.stderr)
        return {"description": description, "judge": None}
