"""From teacher text to LLaVA-Instruct JSON: parsing, validation, the naive caption baseline, the resumable
runner with its cache, and a summary of what was generated.

    images x response types --build_messages--> teacher --raw text--> parse + validate --> records
                                                   |
                                    append-only cache (JSONL): a rerun, or a run resumed after a
                                    crash, asks the teacher only for what it has not answered yet

Output (LLaVA-Instruct JSON), one record per image and response type:

    {"id": "1000001_conversation", "image": "1000001.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the star?"},
                       {"from": "gpt", "value": "The star is blue."}, ...]}

`image` is relative to the split's image folder; `<image>` appears once, in the first human turn, before
or after the text at random. Stage-1 records (the naive baseline) have one human turn (a brief-description
instruction and `<image>`) and one gpt turn (a caption).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from llava_mini.teacher.prompts import (
    BRIEF_INSTRUCTIONS,
    DETAILED_INSTRUCTIONS,
    RESPONSE_TYPES,
    SYSTEM_MESSAGES,
    build_messages,
    load_seeds,
    prompt_fingerprint,
    record_context,
)
from llava_mini.teacher.teachers import SymbolicTeacher, Teacher, TeacherBudgetExhausted, TeacherError, TeacherFatalError
from llava_mini.teacher.records import IMAGE_TOKEN

STOP = "<STOP>"

# ============================================================================= parsing and validation


class ResponseRejected(ValueError):
    """A teacher response that cannot become a training record; `reason` is a short label for counting."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# A marker at the start of a line: "Question:", "**Answer:**", "Q1:", "A:" ...
_MARKER_RE = re.compile(r"^\s*[*#_]*\s*(question|answer|q|a)\s*\d*\s*[*_]*\s*[:：]\s*[*_]*\s*", re.IGNORECASE)
_SEPARATOR_RE = re.compile(r"^\s*={3,}\s*$")

# What gives the game away: the teacher talking about its sources instead of the image.
_LEAKS = {
    "mentions captions": re.compile(r"\bcaption", re.IGNORECASE),
    "mentions boxes": re.compile(r"\bbounding\b|\b(?:the|given|provided|listed)\s+box(?:es)?\b", re.IGNORECASE),
    "mentions coordinates": re.compile(
        r"\bcoordinat|\[\s*-?\d*\.?\d+\s*,\s*-?\d*\.?\d+|\b[01]\.\d{3}\b", re.IGNORECASE),
    "mentions annotations": re.compile(
        r"\bannotat|\b(?:given|provided)\s+(?:description|information|context|sentences?)\b", re.IGNORECASE),
}


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question/answer blocks -> [(question, answer), ...].

    Accepts the prompted format (`Question:` ... `===` `Answer:` ... `===`) and common drift from real
    LLMs (bold markers, `Q:`/`A:`, numbered questions, missing separators). A question without an
    answer, or an answer without a question, is dropped.
    """
    segments: list[list] = []  # [label, lines]
    for line in text.replace("\r\n", "\n").split("\n"):
        if _SEPARATOR_RE.match(line):
            continue
        m = _MARKER_RE.match(line)
        if m:
            label = "question" if m[1].lower() in ("question", "q") else "answer"
            segments.append([label, [line[m.end():]]])
        elif segments:
            segments[-1][1].append(line)
    pairs = []
    for (label, lines), nxt in zip(segments, segments[1:] + [None]):
        if label == "question" and nxt is not None and nxt[0] == "answer":
            q, a = "\n".join(lines).strip(), "\n".join(nxt[1]).strip()
            if q and a:
                pairs.append((q, a))
    return pairs


def _check_leaks(text: str) -> None:
    for reason, pattern in _LEAKS.items():
        m = pattern.search(text)
        if m:
            raise ResponseRejected(reason, repr(m.group(0)))


def validate_response(text: str | None, response_type: str) -> list[tuple[str, str | None]]:
    """Parse one teacher response and check it, or raise ResponseRejected naming what is wrong.

    Returns [(question, answer), ...]; for the detail type a single (None, description) pair (its
    question is a detailed-description instruction chosen by the runner).
    """
    if response_type not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {response_type!r}")
    if text is None or not text.strip():
        raise ResponseRejected("empty")
    text = text.strip()
    _check_leaks(text)
    if response_type == "detail":
        if _MARKER_RE.search(text.split("\n", 1)[0]) or "===" in text:
            raise ResponseRejected("not prose", "a description came back as question/answer blocks")
        if len(text.split()) < 8:
            raise ResponseRejected("too short", f"{len(text.split())} words")
        return [(None, text)]
    pairs = parse_qa_pairs(text)
    if not pairs:
        raise ResponseRejected("no question/answer pairs")
    if response_type == "complex":
        return pairs[:1]  # one question with its reasoning; anything after it is the teacher rambling on
    return pairs


# ============================================================================= records


def _with_image(text: str, rng: random.Random) -> str:
    """Put the image placeholder before or after the text, at random, as in the LLaVA data."""
    return f"{IMAGE_TOKEN}\n{text}" if rng.random() < 0.5 else f"{text}\n{IMAGE_TOKEN}"


def make_record(record_id: str, image: str, pairs: list[tuple[str, str]], rng: random.Random) -> dict:
    """A LLaVA-Instruct record from question/answer pairs; `<image>` goes into the first question."""
    if not pairs:
        raise ValueError(f"record {record_id}: no question/answer pairs")
    conversations = []
    for k, (q, a) in enumerate(pairs):
        conversations.append({"from": "human", "value": _with_image(q, rng) if k == 0 else q})
        conversations.append({"from": "gpt", "value": a})
    return {"id": record_id, "image": image, "conversations": conversations}


def response_to_record(text: str, response_type: str, record_id: str, image: str, rng: random.Random) -> dict:
    """Validate a teacher response and turn it into a record (raises ResponseRejected)."""
    pairs = validate_response(text, response_type)
    if response_type == "detail":
        pairs = [(rng.choice(DETAILED_INSTRUCTIONS), pairs[0][1])]
    return make_record(record_id, image, pairs, rng)


def check_record(record: dict) -> None:
    """Raise ValueError unless `record` has the LLaVA-Instruct shape this project writes."""
    where = f"record {record.get('id', '?')!r}" if isinstance(record, dict) else "record"
    if not isinstance(record, dict) or not {"id", "image", "conversations"} <= set(record):
        raise ValueError(f"{where}: needs id, image and conversations")
    turns = record["conversations"]
    if not turns or len(turns) % 2:
        raise ValueError(f"{where}: expected an even, non-zero number of turns")
    for k, turn in enumerate(turns):
        expected = "human" if k % 2 == 0 else "gpt"
        if turn.get("from") != expected or not isinstance(turn.get("value"), str) or not turn["value"].strip():
            raise ValueError(f"{where}: turn {k} should be a non-empty {expected} turn")
    if sum(t["value"].count(IMAGE_TOKEN) for t in turns) != 1 or IMAGE_TOKEN not in turns[0]["value"]:
        raise ValueError(f"{where}: {IMAGE_TOKEN} must appear exactly once, in the first human turn")


def read_records(path: str | Path) -> list[dict]:
    """Load a LLaVA-Instruct JSON file and check every record."""
    records = json.loads(Path(path).read_text())
    for r in records:
        check_record(r)
    return records


def record_type(record: dict) -> str:
    """The response type of a record written here (from its id: '<image>_<type>', '<image>_caption<k>')."""
    suffix = record["id"].rsplit("_", 1)[-1]
    return "caption" if suffix.startswith("caption") else suffix


# ----------------------------------------------------------------------------- the naive baseline / stage 1


def caption_records(records: Iterable, seed: int = 0, captions: str = "all") -> list[dict]:
    """The naive expansion the paper starts from: each caption becomes one single-turn record,
    `Human: X_q X_v <STOP> Assistant: X_c <STOP>`, with X_q a brief-description instruction.
    It is also exactly the stage-1 (feature alignment) data.

    `records`: coco.ImageRecords; `captions`: "all" (one record per caption), "first" or "random".
    """
    if captions not in ("all", "first", "random"):
        raise ValueError(f"captions must be 'all', 'first' or 'random', not {captions!r}")
    out = []
    for rec in records:
        stem = Path(rec.file_name).stem
        rng = random.Random(f"{seed}:{stem}:caption")
        chosen = list(enumerate(rec.captions))
        if not chosen:
            continue
        if captions == "first":
            chosen = chosen[:1]
        elif captions == "random":
            chosen = [rng.choice(chosen)]
        for k, caption in chosen:
            out.append(make_record(f"{stem}_caption{k}", rec.file_name, [(rng.choice(BRIEF_INSTRUCTIONS), caption)], rng))
    return out


def naive_text(record: dict) -> str:
    """A record in the paper's plain form: `Human: X_q X_v <STOP> Assistant: X_c <STOP>` per turn pair."""
    lines = []
    for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2]):
        q = human["value"]
        if IMAGE_TOKEN in q:  # X_q then X_v: the instruction, then the image
            q = q.replace(IMAGE_TOKEN, "").strip() + " " + IMAGE_TOKEN
        lines.append(f"Human: {q} {STOP} Assistant: {gpt['value']} {STOP}")
    return "\n".join(lines)


# ============================================================================= the cache


class ResponseCache:
    """Append-only JSONL of raw teacher responses, one line per (image, type, teacher, prompt) key.

    Lines are flushed as they are written, so a killed run loses at most the call in flight; a torn
    last line is cut off when the cache is opened again. Only the raw text is stored (parsing is cheap
    and deterministic, so a better parser applies to old responses too) — never a secret.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, str] = {}
        self.torn_lines = 0
        self._load()
        self._file = None

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good_end = 0
        for line in data.split(b"\n"):
            end = good_end + len(line) + 1
            if not line.strip():
                good_end = min(end, len(data))
                continue
            try:
                entry = json.loads(line)
                self.entries[entry["key"]] = entry["response"]
            except (ValueError, KeyError, TypeError):
                self.torn_lines += 1
                break  # a torn line can only be the last one written
            if end > len(data):  # a complete JSON object without its newline: keep it, add the newline
                with self.path.open("ab") as f:
                    f.write(b"\n")
                end = len(data) + 1
            good_end = end
        if self.torn_lines:
            with self.path.open("r+b") as f:
                f.truncate(good_end)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> str | None:
        return self.entries.get(key)

    def put(self, key: str, response: str, **meta) -> None:
        if key in self.entries:
            return  # append-only and duplicate-free
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps({"key": key, **meta, "response": response}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.entries[key] = response

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def cache_key(image: str, response_type: str, teacher_identity: str, messages: list[dict]) -> str:
    blob = json.dumps([image, response_type, teacher_identity, prompt_fingerprint(messages)])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


# ============================================================================= the runner


@dataclass
class GenerationResult:
    records: list[dict]
    summary: dict
    paths: dict[str, Path] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)  # per type: messages, raw response, record
    rejected_examples: list[dict] = field(default_factory=list)  # id, reason, raw response


def generate_instruct_data(
    records: Iterable,
    teacher: Teacher | None = None,
    out_file: str | Path | None = None,
    cache_file: str | Path | None = None,
    types: Iterable[str] = RESPONSE_TYPES,
    seed: int = 0,
    n_shots: int | None = None,
    progress: bool = True,
    stage1_file: str | Path | None = None,
    summary_file: str | Path | None = None,
    workers: int = 1,
    keep_examples: int = 3,
) -> GenerationResult:
    """Ask `teacher` for every (image, response type) and collect LLaVA-Instruct records.

    records:    coco.ImageRecords (each one's symbolic context is what the teacher reads)
    teacher:    default SymbolicTeacher(seed)
    out_file:   where to write the instruction JSON (optional); stage1_file likewise for caption records,
                summary_file for the summary
    cache_file: the append-only response cache; without one every call goes to the teacher
    workers:    concurrent teacher calls (for a remote server; the cache is still written by one thread)

    A bad response is rejected and counted; a call that fails for good (after the teacher's own retries)
    is counted and not cached, so a rerun tries it again; a spent request budget stops the calls early,
    keeping everything so far. The summary says which of these happened.
    """
    import warnings

    with warnings.catch_warnings():  # tqdm.auto warns when a notebook has no ipywidgets; text bars are fine
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm

    teacher = teacher or SymbolicTeacher(seed)
    types = tuple(types)
    for t in types:
        if t not in RESPONSE_TYPES:
            raise ValueError(f"unknown response type {t!r}; expected some of {RESPONSE_TYPES}")
    records = list(records)
    seeds = {t: load_seeds(t) for t in types}
    started = time.perf_counter()

    def messages_for(rec, response_type):
        return build_messages(response_type, record_context(rec, response_type), seeds[response_type], n_shots)

    # 1. What does the cache already hold?
    units = [(rec, t) for rec in records for t in types]
    cache = ResponseCache(cache_file) if cache_file else None
    responses: dict[int, str] = {}
    pending: list[tuple[int, str]] = []  # (unit index, cache key)
    no_context: Counter = Counter()  # images the teacher would have nothing to read about (no captions)
    for index, (rec, t) in enumerate(units):
        try:
            messages = messages_for(rec, t)
        except ValueError:
            no_context[t] += 1
            continue
        key = cache_key(rec.file_name, t, teacher.identity, messages)
        if cache is not None and key in cache:
            responses[index] = cache.get(key)
        else:
            pending.append((index, key))
    cache_hits = len(responses)

    # 2. Ask the teacher for the rest, caching each answer the moment it arrives.
    failures: Counter = Counter()
    stopped = None

    def ask(index: int) -> str:
        rec, t = units[index]
        return teacher.complete(messages_for(rec, t))

    def keep(index: int, key: str, text: str) -> None:
        responses[index] = text
        if cache is not None:
            rec, t = units[index]
            cache.put(key, text, image=rec.file_name, type=t, teacher=teacher.identity)

    bar = tqdm(total=len(pending), desc=f"teacher {teacher.identity[:40]}", disable=not progress or not pending, unit="call")
    try:
        if workers <= 1:
            for index, key in pending:
                try:
                    keep(index, key, ask(index))
                except TeacherBudgetExhausted as e:
                    stopped = f"request budget spent: {e}"
                    break
                except TeacherFatalError:
                    raise
                except TeacherError as e:
                    failures[_failure_label(e)] += 1
                bar.update(1)
        else:
            from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

            queue = list(reversed(pending))
            with ThreadPoolExecutor(workers) as pool:
                running = {}
                while (queue and not stopped) or running:
                    while queue and not stopped and len(running) < 2 * workers:
                        index, key = queue.pop()
                        running[pool.submit(ask, index)] = (index, key)
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        index, key = running.pop(future)
                        try:
                            keep(index, key, future.result())
                        except TeacherBudgetExhausted as e:
                            stopped = f"request budget spent: {e}"
                        except TeacherFatalError:
                            queue.clear()
                            raise
                        except TeacherError as e:
                            failures[_failure_label(e)] += 1
                        bar.update(1)
    finally:
        bar.close()
        if cache is not None:
            cache.close()

    # 3. Parse and validate, in a fixed order, so the output does not depend on call timing.
    out: list[dict] = []
    rejected: Counter = Counter({"no context": sum(no_context.values())} if no_context else {})
    rejected_by_type: Counter = Counter(no_context)
    examples: dict[str, list[dict]] = {t: [] for t in types}
    rejected_examples: list[dict] = []
    for index, (rec, t) in enumerate(units):
        if index not in responses:
            continue
        text = responses[index]
        record_id = f"{Path(rec.file_name).stem}_{t}"
        rng = random.Random(f"{seed}:{record_id}")
        try:
            record = response_to_record(text, t, record_id, rec.file_name, rng)
        except ResponseRejected as e:
            rejected[e.reason] += 1
            rejected_by_type[t] += 1
            if len(rejected_examples) < keep_examples:
                rejected_examples.append({"id": record_id, "reason": e.reason, "response": text})
            continue
        out.append(record)
        if len(examples[t]) < keep_examples:
            examples[t].append({"messages": messages_for(rec, t), "response": text, "record": record})

    paths: dict[str, Path] = {}
    if out_file:
        paths["instruct"] = _write_json(out_file, out)
    stage1 = None
    if stage1_file:
        stage1 = caption_records(records, seed=seed)  # captions need no teacher: always complete
        paths["stage1"] = _write_json(stage1_file, stage1)
    summary = summarize(out, stage1)
    summary.update({
        "images": len(records),
        "teacher": teacher.identity,
        "teacher_calls": len(responses) - cache_hits,
        "cache_hits": cache_hits,
        "missing": len(units) - len(responses) - sum(no_context.values()),
        "rejected": dict(rejected),
        "rejected_by_type": dict(rejected_by_type),
        "teacher_failures": dict(failures),
        "teacher_stats": dict(getattr(teacher, "stats", {}) or {}),
        "stopped_early": stopped,
        "seconds": round(time.perf_counter() - started, 2),
    })
    if summary_file:
        paths["summary"] = _write_json(summary_file, summary)
    return GenerationResult(out, summary, paths, examples, rejected_examples)


def _failure_label(error: TeacherError) -> str:
    return "failed after retries" if type(error) is TeacherError else type(error).__name__


def _write_json(path: str | Path, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=None))
    tmp.replace(path)  # readers never see a half-written file
    return path


def summarize(records: list[dict], stage1: list[dict] | None = None) -> dict:
    """Counts and lengths of a generated set: records per type, question/answer pairs per record,
    words per answer."""
    by_type: dict[str, list[dict]] = {}
    for r in records:
        by_type.setdefault(record_type(r), []).append(r)
    summary = {"records": {t: len(v) for t, v in sorted(by_type.items())}, "total_records": len(records)}
    if stage1 is not None:
        summary["stage1_records"] = len(stage1)
    pairs, words = {}, {}
    for t, rs in sorted(by_type.items()):
        n_pairs = [len(r["conversations"]) // 2 for r in rs]
        answer_words = [len(turn["value"].split()) for r in rs for turn in r["conversations"][1::2]]
        pairs[t] = {"mean": round(statistics.mean(n_pairs), 2), "min": min(n_pairs), "max": max(n_pairs)}
        words[t] = {"mean": round(statistics.mean(answer_words), 1), "median": statistics.median(answer_words),
                    "max": max(answer_words)}
    summary["qa_pairs_per_record"] = pairs
    summary["words_per_answer"] = words
    return summary


# ============================================================================= the course's data






# ============================================================================= looking at the data

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
    """A rough label for a question (for statistics): relation, count, existence, colour, shape, size,
    position or other."""
    q = question.replace(IMAGE_TOKEN, "").strip().lower()
    for kind, pattern in _KIND_PATTERNS:
        if re.search(pattern, q):
            return kind
    return "other"


def plot_generation_stats(records: list[dict], path: str | Path | None = None):
    """Four panels: records per type, question kinds in conversations, question/answer pairs per
    conversation, words per answer by type. Returns the figure (saved to `path` if given)."""
    import matplotlib.pyplot as plt

    by_type: dict[str, list[dict]] = {}
    for r in records:
        by_type.setdefault(record_type(r), []).append(r)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    types = sorted(by_type)
    axes[0].bar(types, [len(by_type[t]) for t in types], color=["tab:blue", "tab:orange", "tab:green", "tab:red"][: len(types)])
    axes[0].set_title("records per response type")
    kinds = Counter(question_kind(turn["value"]) for r in by_type.get("conversation", [])
                    for turn in r["conversations"][::2])
    names = [k for k, _ in kinds.most_common()]
    axes[1].barh(names[::-1], [kinds[k] for k in names[::-1]], color="tab:blue")
    axes[1].set_title("conversation questions by kind")
    pairs = Counter(len(r["conversations"]) // 2 for r in by_type.get("conversation", []))
    axes[2].bar(sorted(pairs), [pairs[k] for k in sorted(pairs)], color="tab:blue")
    axes[2].set_title("question/answer pairs per conversation")
    axes[2].set_xlabel("pairs")
    for t in types:
        words = [len(turn["value"].split()) for r in by_type[t] for turn in r["conversations"][1::2]]
        axes[3].hist(words, bins=range(0, max(words) + 5, 3), alpha=0.6, label=t)
    axes[3].set_title("words per answer")
    axes[3].set_xlabel("words")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig


def show_generated(records: list[dict], image_dir: str | Path, path: str | Path | None = None, width: int = 62):
    """Each record's image beside its conversation (one row per record). Returns the figure."""
    import textwrap

    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(len(records), 2, figsize=(12, 2.9 * len(records)),
                             gridspec_kw={"width_ratios": [1, 3.2]}, squeeze=False)
    for (ax_img, ax_txt), rec in zip(axes, records):
        ax_img.imshow(Image.open(Path(image_dir) / rec["image"]).convert("RGB"), interpolation="nearest")
        ax_img.set_title(rec["id"], fontsize=9)
        ax_img.set_axis_off()
        lines = []
        for turn in rec["conversations"]:
            who = "Human" if turn["from"] == "human" else "GPT"
            text = turn["value"].replace(IMAGE_TOKEN, "").strip()
            lines += textwrap.wrap(f"{who}: {text}", width, subsequent_indent="    ")
        ax_txt.text(0, 1, "\n".join(lines[:16]) + ("\n..." if len(lines) > 16 else ""), va="top", family="monospace",
                    fontsize=8.5, transform=ax_txt.transAxes)
        ax_txt.set_axis_off()
    fig.tight_layout()
    if path:
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
