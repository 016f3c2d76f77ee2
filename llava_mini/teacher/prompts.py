"""What the teacher is asked. The paper asked a text-only GPT-4 for three kinds of data about an image it
never saw, from its symbolic view (captions, for two kinds also boxes): a conversation (questions with
definite answers), a detailed description, and one question needing reasoning, answered step by step.
One teacher call (`build_messages`), all wording this project's own:

    system     SYSTEM_MESSAGES[type]
    user       context of seed example 1           <- few-shot: the teacher sees what a good
    assistant  reference response of example 1        answer to a context looks like
    ...
    user       context of the image we want data for
"""

from functools import lru_cache
from pathlib import Path

from llava_mini.files import fingerprint, read_json
from llava_mini.paths import DATA_DIR
from llava_mini.world import context_text

RESPONSE_TYPES = ("conversation", "detail", "complex")
SEEDS_DIR = DATA_DIR / "seeds"

# The paper's conversation type saw captions only; detail and complex reasoning also saw the boxes.
USES_BOXES = {"conversation": False, "detail": True, "complex": True}

_SHARED_RULES = (
    "You cannot see the image. Instead you receive a few sentences that people wrote about it, and "
    "sometimes a list of the objects in it with their locations given as x1, y1, x2, y2 fractions of the "
    "image width and height (x grows to the right, y grows downwards). Write as if you were looking at "
    "the picture yourself: never mention the sentences, descriptions, annotations, lists, boxes or "
    "numeric coordinates you were given, and never quote a coordinate. State only what the information "
    "supports; if something is uncertain, leave it out rather than guess."
)

SYSTEM_MESSAGES: dict[str, str] = {
    "conversation": (
        "You are an assistant that talks about a single image with a curious user. " + _SHARED_RULES + "\n\n"
        "Write a short conversation about the image: between two and five questions a person might ask, "
        "each followed by your answer. Ask about what is visible and can be answered for certain: the "
        "kinds of objects, their colours and shapes, how many there are, where they are and how they "
        "sit relative to each other, whether something is present. Answer each question with a short, "
        "definite sentence that contains the answer; start yes/no answers with \"Yes\" or \"No\" and write "
        "counts as words. Do not ask anything the information cannot settle.\n\n"
        "Format every pair exactly like this:\n"
        "Question:\n<the question>\n===\nAnswer:\n<your answer>\n==="
    ),
    "detail": (
        "You are an assistant that describes images in depth. " + _SHARED_RULES + "\n\n"
        "Write one detailed paragraph describing the image for someone who cannot see it: what the "
        "objects are, how many there are, their colours, shapes and sizes, and roughly where each one "
        "is in the frame (for example near the top left, in the centre, along the bottom). Mention every "
        "object you know about. Use the locations to describe positions in words only."
    ),
    "complex": (
        "You are an assistant that reasons about images. " + _SHARED_RULES + "\n\n"
        "Write one question about the image whose answer needs a few steps of thought (comparing, "
        "counting, imagining a change to the scene, or explaining what something implies) rather than "
        "a single glance. Then answer it step by step, ending with a clear conclusion. The question "
        "must have a correct answer that follows from the information you were given.\n\n"
        "Format it exactly like this:\n"
        "Question:\n<the question>\n===\nAnswer:\n<your step-by-step answer>\n==="
    ),
}

# Stage 1 (feature alignment) asks for a short description; the answer is one caption.
BRIEF_INSTRUCTIONS: tuple[str, ...] = (
    "Describe the image briefly.", "Give a short description of this picture.",
    "What does this image show, in a sentence?", "Summarise the picture in a few words.",
    "Write a one-line caption for this image.", "Sum up what you see here.",
    "Tell me briefly what is in the picture.", "Provide a compact description of the scene.",
    "What is this a picture of? Keep it short.", "Caption this image.", "In one sentence, what is shown here?",
    "Give a quick overview of the image.",
)

# The human side of a detailed-description record (the teacher only writes the description).
DETAILED_INSTRUCTIONS: tuple[str, ...] = (
    "Describe this image in detail.", "Give a thorough description of everything in the picture.",
    "What can you see in this image? Please be as complete as possible.",
    "Walk me through the contents of this picture, object by object.",
    "Write a detailed account of the scene shown here.",
    "Explain in detail what the image contains and where things are.",
    "Describe every object in the picture, with its appearance and position.",
    "Paint a full picture in words of what this image shows.", "Tell me everything you notice about this image.",
    "Provide an elaborate description of the image.",
    "Could you describe the picture carefully, leaving nothing out?",
    "Look closely at the image and describe what is there.",
)


class SeedFormatError(ValueError):
    """A few-shot seed file (data/seeds/<type>.json) is missing or malformed; the message names it."""


@lru_cache(maxsize=None)
def _load_seed_file(path: Path) -> tuple[tuple[str, str], ...]:
    items = read_json(path, error=SeedFormatError)
    if not isinstance(items, list) or not items:
        raise SeedFormatError(f"{path}: expected a non-empty JSON list of examples")
    seeds = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k].strip()
                                                  for k in ("context", "response")):
            raise SeedFormatError(f"{path}: example {i} needs non-empty 'context' and 'response' strings")
        seeds.append((item["context"].strip(), item["response"].strip()))
    return tuple(seeds)


def load_seeds(response_type: str, seeds_dir: str | Path | None = None) -> list[tuple[str, str]]:
    """The few-shot (context, reference response) pairs of a type, from data/seeds/<type>.json."""
    _check_type(response_type)
    return list(_load_seed_file(Path(seeds_dir or SEEDS_DIR) / f"{response_type}.json"))


def _check_type(response_type: str) -> None:
    if response_type not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {response_type!r}; expected one of {RESPONSE_TYPES}")


def build_messages(response_type: str, context: str, seeds: list[tuple[str, str]] | None = None,
                   n_shots: int | None = None) -> list[dict[str, str]]:
    """The chat messages for one teacher call: system, (user context, assistant response) per seed example,
    then the query context as the last user message. `seeds` defaults to the shipped examples of the type;
    `n_shots` keeps only the first n."""
    _check_type(response_type)
    if not context or not context.strip():
        raise ValueError("the context is empty: there is nothing for the teacher to read")
    seeds = load_seeds(response_type) if seeds is None else seeds
    if n_shots is not None:
        seeds = seeds[:n_shots]
    messages = [{"role": "system", "content": SYSTEM_MESSAGES[response_type]}]
    for seed_context, seed_response in seeds:
        messages += [{"role": "user", "content": seed_context}, {"role": "assistant", "content": seed_response}]
    messages.append({"role": "user", "content": context.strip()})
    return messages


def record_context(record, response_type: str) -> str:
    """The symbolic context the teacher gets for `record` (a world ImageRecord): captions only for
    conversations, captions + boxes for the other two types."""
    _check_type(response_type)
    return context_text(record, boxes=USES_BOXES[response_type])


def response_type_of(messages: list[dict[str, str]]) -> str | None:
    """Which response type a message list asks for, judged from its system message (None if unknown)."""
    if not messages or messages[0].get("role") != "system":
        return None
    return next((t for t, text in SYSTEM_MESSAGES.items() if messages[0].get("content") == text), None)


def prompt_fingerprint(messages: list[dict[str, str]]) -> str:
    """A short stable hash of a message list (change a prompt, and a cache keyed on it misses)."""
    return fingerprint(messages)


def format_messages(messages: list[dict[str, str]], max_chars: int | None = None) -> str:
    """The messages as a readable transcript (for notebooks and logs); `max_chars` shortens each one."""
    def shorten(text):
        return text[:max_chars].rstrip() + " [...]" if max_chars is not None and len(text) > max_chars else text

    return "\n".join(f"----- {m['role']} -----\n{shorten(m['content'])}" for m in messages)
