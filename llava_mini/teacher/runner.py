"""The resumable runner, and a summary of what it generated.

    images x response types --build_messages--> teacher --raw text--> parse + validate --> records
                                                   '--> cache: a rerun asks only for what is not answered yet
"""

import random
import re
import statistics
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Iterable

from tqdm.auto import tqdm

from llava_mini.files import write_json
from llava_mini.teacher.base import Teacher, TeacherBudgetExhausted, TeacherError, TeacherFatalError
from llava_mini.teacher.cache import ResponseCache, cache_key
from llava_mini.teacher.prompts import RESPONSE_TYPES, build_messages, load_seeds, record_context
from llava_mini.teacher.records import IMAGE_TOKEN, caption_records, record_type
from llava_mini.teacher.responses import ResponseRejected, response_to_record
from llava_mini.teacher.symbolic import SymbolicTeacher

EMPTY_REPLY = "empty replies (retried next run)"


@dataclass
class GenerationResult:
    records: list[dict]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)  # per type: messages, raw response, record
    rejected_examples: list[dict] = field(default_factory=list)  # id, reason, raw response


def generate_instruct_data(
    records: Iterable, teacher: Teacher | None = None, out_file: str | Path | None = None,
    cache_file: str | Path | None = None, types: Iterable[str] = RESPONSE_TYPES, seed: int = 0,
    n_shots: int | None = None, progress: bool = True, stage1_file: str | Path | None = None,
    summary_file: str | Path | None = None, workers: int = 1, keep_examples: int = 3,
) -> GenerationResult:
    """Ask `teacher` (default SymbolicTeacher(seed)) about each world ImageRecord in `records` for each type,
    and collect LLaVA-Instruct records; `out_file`, `stage1_file` (caption records) and `summary_file` are
    written when given. `cache_file`: the response cache (without one every call goes to the teacher);
    `workers`: concurrent calls, for a remote server. A bad response is rejected and counted; a call that fails
    for good or comes back empty is counted, not cached; a spent request budget stops early, keeping all so far."""
    started, teacher, records = time.perf_counter(), teacher or SymbolicTeacher(seed), list(records)
    seeds = {t: load_seeds(t) for t in types}  # (an unknown type raises here)

    # 1. What does the cache already hold?
    units = [(rec, t) for rec in records for t in seeds]
    cache = ResponseCache(cache_file) if cache_file else None
    messages, responses = {}, {}  # unit index -> the teacher call, and its answer
    pending: list[tuple[int, str]] = []  # (unit index, cache key)
    no_context: Counter = Counter()  # images the teacher would have nothing to read about (no captions)
    for index, (rec, t) in enumerate(units):
        try:
            messages[index] = build_messages(t, record_context(rec, t), seeds[t], n_shots)
        except ValueError:
            no_context[t] += 1
            continue
        key = cache_key(rec.file_name, t, teacher.identity, messages[index])
        if cache is not None and key in cache:
            responses[index] = cache.get(key)
        else:
            pending.append((index, key))
    cache_hits = len(responses)

    # 2. Ask the teacher for the rest, caching each answer the moment it arrives, so a killed run loses only the
    # calls in flight: one at a time with one worker (a fatal error stops after one request), else 2x workers.
    failures, stopped = Counter(), None

    def settle(index: int, key: str, call) -> str | None:
        """Collect one call and keep its answer; returns why the run must stop, or None."""
        try:
            text = call()
        except TeacherBudgetExhausted as e:
            return f"request budget spent: {e}"
        except TeacherFatalError:
            raise
        except TeacherError as e:
            failures["failed after retries" if type(e) is TeacherError else type(e).__name__] += 1
            return None
        if not isinstance(text, str) or not text.strip():
            failures[EMPTY_REPLY] += 1  # often transient: never cached, so the next run asks again
            return None
        responses[index] = text
        if cache is not None:
            cache.put(key, text, image=units[index][0].file_name, type=units[index][1], teacher=teacher.identity)

    window, queue, running = 2 * workers if workers > 1 else 1, list(reversed(pending)), {}
    bar = tqdm(total=len(pending), desc=f"teacher {teacher.identity[:40]}", unit="call",
               disable=not (progress and pending))
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool, bar:
            while (queue and not stopped) or running:
                while queue and not stopped and len(running) < window:
                    index, key = queue.pop()
                    running[pool.submit(teacher.complete, messages[index])] = (index, key)
                for future in wait(running, return_when=FIRST_COMPLETED).done:
                    stopped = settle(*running.pop(future), future.result) or stopped
                    bar.update(1)
    finally:
        if cache is not None:
            cache.close()

    # 3. Parse and validate, in a fixed order, so the output does not depend on call timing.
    out, examples, rejected_examples, rejected_by_type = [], {t: [] for t in seeds}, [], Counter(no_context)
    rejected = Counter({"no context": sum(no_context.values())} if no_context else {})
    for index, text in sorted(responses.items()):
        rec, t = units[index]
        record_id = f"{Path(rec.file_name).stem}_{t}"
        try:
            record = response_to_record(text, t, record_id, rec.file_name, random.Random(f"{seed}:{record_id}"))
        except ResponseRejected as e:
            rejected[e.reason] += 1
            rejected_by_type[t] += 1
            if len(rejected_examples) < keep_examples:
                rejected_examples.append({"id": record_id, "reason": e.reason, "response": text})
            continue
        out.append(record)
        if len(examples[t]) < keep_examples:
            examples[t].append({"messages": messages[index], "response": text, "record": record})

    stage1 = caption_records(records, seed=seed) if stage1_file else None  # captions need no teacher: complete
    paths = {name: write_json(file, data) for name, file, data in
             (("instruct", out_file, out), ("stage1", stage1_file, stage1)) if file}
    summary = summarize(out, stage1) | {
        "images": len(records), "teacher": teacher.identity,
        "teacher_calls": len(responses) - cache_hits + failures[EMPTY_REPLY], "cache_hits": cache_hits,
        "missing": len(units) - len(responses) - sum(no_context.values()),
        "rejected": dict(rejected), "rejected_by_type": dict(rejected_by_type), "teacher_failures": dict(failures),
        "teacher_stats": dict(getattr(teacher, "stats", {}) or {}), "stopped_early": stopped,
        "seconds": round(time.perf_counter() - started, 2),
    }
    if summary_file:
        paths["summary"] = write_json(summary_file, summary)
    return GenerationResult(out, summary, paths, examples, rejected_examples)


def summarize(records: list[dict], stage1: list[dict] | None = None) -> dict:
    """Counts and lengths of a generated set: records per type, question/answer pairs per record, words per answer."""
    by_type = {t: list(rs) for t, rs in groupby(sorted(records, key=record_type), key=record_type)}
    summary = {"records": {t: len(v) for t, v in by_type.items()}, "total_records": len(records)}
    if stage1 is not None:
        summary["stage1_records"] = len(stage1)
    pairs, words = {}, {}
    for t, rs in by_type.items():
        n_pairs = [len(r["conversations"]) // 2 for r in rs]
        answer_words = [len(turn["value"].split()) for r in rs for turn in r["conversations"][1::2]]
        pairs[t] = {"mean": round(statistics.mean(n_pairs), 2), "min": min(n_pairs), "max": max(n_pairs)}
        words[t] = {"mean": round(statistics.mean(answer_words), 1), "median": statistics.median(answer_words),
                    "max": max(answer_words)}
    return summary | {"qa_pairs_per_record": pairs, "words_per_answer": words}


_KIND_PATTERNS = (
    ("relation", r"\b(left|right|above|below|higher|lower|relative|compared)\b"),
    ("count", r"\bhow many\b|\bcount\b|\bnumber of\b"),
    ("existence", r"^(is there|are there|can you see|does the picture contain|do you see)\b"),
    ("colour", r"\bcolou?r\b"),
    ("shape", r"\bshape\b|\bwhat kind of\b"),
    ("size", r"\bhow big\b|\bsize\b|small, medium or large"),
    ("position", r"^where\b"),
)


def question_kind(question: str) -> str:
    """A rough label for a question, for statistics: the first kind in _KIND_PATTERNS that matches, or 'other'."""
    q = question.replace(IMAGE_TOKEN, "").strip().lower()
    return next((kind for kind, pattern in _KIND_PATTERNS if re.search(pattern, q)), "other")
