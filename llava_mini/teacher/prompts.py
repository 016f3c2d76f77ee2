"""What the teacher is asked. The paper asked a text-only GPT-4 for three kinds of data about an image it
never saw, from its symbolic view (captions, for two kinds also boxes): a conversation (questions with
definite answers), a detailed description, and one question needing reasoning, answered step by step.
One teacher call (`build_messages`), all wording this project's own:

    system     SYSTEM_MESSAGES[type]                (data/prompts/system_<type>.txt)
    user       context of seed example 1           <- few-shot: the teacher sees what a good
    assistant  reference response of example 1        answer to a context looks like
    ...
    user       context of the image we want data for
"""

from functools import lru_cache
from pathlib import Path

from llava_mini.files import read_json
from llava_mini.paths import DATA_DIR
from llava_mini.world import context_text

RESPONSE_TYPES = ("conversation", "detail", "complex")
SEEDS_DIR = DATA_DIR / "seeds"

# The paper's conversation type saw captions only; detail and complex reasoning also saw the boxes.
USES_BOXES = {"conversation": False, "detail": True, "complex": True}

PROMPTS_DIR = DATA_DIR / "prompts"
# What the teacher is told to write, one file per response type (like LLaVA's own system_message.txt files).
SYSTEM_MESSAGES: dict[str, str] = {t: (PROMPTS_DIR / f"system_{t}.txt").read_text(encoding="utf-8").strip()
                                   for t in RESPONSE_TYPES}
_INSTRUCTIONS = read_json(PROMPTS_DIR / "instructions.json")
# Stage 1 (feature alignment) asks for a short description; the answer is one caption.
BRIEF_INSTRUCTIONS: tuple[str, ...] = tuple(_INSTRUCTIONS["brief"])
# The human side of a detailed-description record (the teacher only writes the description).
DETAILED_INSTRUCTIONS: tuple[str, ...] = tuple(_INSTRUCTIONS["detailed"])


class SeedFormatError(ValueError):
    """A few-shot seed file (data/seeds/<type>.json) is missing or malformed; the message names it."""


@lru_cache(maxsize=None)
def _load_seed_file(path: Path) -> tuple[tuple[str, str], ...]:
    items = read_json(path, error=SeedFormatError)
    if not isinstance(items, list) or not items:
        raise SeedFormatError(f"{path}: expected a non-empty JSON list of examples")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                  for k in ("context", "response")):
            raise SeedFormatError(f"{path}: example {i} needs non-empty 'context' and 'response' strings")
    return tuple((item["context"].strip(), item["response"].strip()) for item in items)


def load_seeds(response_type: str, seeds_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """The few-shot (context, reference response) pairs of a type, from data/seeds/<type>.json."""
    check_type(response_type)
    return list(_load_seed_file(Path(seeds_dir or SEEDS_DIR) / f"{response_type}.json"))


def check_type(response_type: str) -> None:
    if response_type not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {response_type!r}; expected one of {RESPONSE_TYPES}")


def build_messages(response_type: str, context: str, seeds: list[tuple[str, str]] | None = None,
                   n_shots: int | None = None) -> list[dict[str, str]]:
    """The chat messages for one teacher call: system, (user context, assistant response) per seed example (the
    first `n_shots` of `seeds`, default the type's shipped ones), then the query context as the last user turn."""
    check_type(response_type)
    if not context or not context.strip():
        raise ValueError("the context is empty: there is nothing for the teacher to read")
    seeds = (load_seeds(response_type) if seeds is None else seeds)[:n_shots]
    messages = [{"role": "system", "content": SYSTEM_MESSAGES[response_type]}]
    for seed_context, seed_response in seeds:
        messages += [{"role": "user", "content": seed_context}, {"role": "assistant", "content": seed_response}]
    messages.append({"role": "user", "content": context.strip()})
    return messages


def record_context(record, response_type: str) -> str:
    """The symbolic context the teacher gets for a world ImageRecord: its captions, and boxes if USES_BOXES."""
    check_type(response_type)
    return context_text(record, boxes=USES_BOXES[response_type])


def response_type_of(messages: list[dict[str, str]]) -> str | None:
    """Which response type a message list asks for, judged from its system message (None if unknown)."""
    if not messages or messages[0].get("role") != "system":
        return None
    return next((t for t, text in SYSTEM_MESSAGES.items() if messages[0].get("content") == text), None)


def format_messages(messages: list[dict[str, str]]) -> str:
    """The messages as a readable transcript (for notebooks and logs)."""
    return "\n".join(f"----- {m['role']} -----\n{m['content']}" for m in messages)
