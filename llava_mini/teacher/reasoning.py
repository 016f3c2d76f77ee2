"""The symbolic teacher's complex-reasoning writer: one question that takes a few steps of thought
(counting by colour, imagining a change, comparing sizes or positions), answered step by step.

Each question maker returns (question, *steps), or None when the reading cannot settle it; positions are
used only when the boxes order the shapes clearly."""

import random
from collections import Counter

from llava_mini.english import article, join, number_word, plural
from llava_mini.teacher.reading import SIZE_RANK, SceneReading, size_word
from llava_mini.teacher.responses import format_qa
from llava_mini.world import unique_name


def write_reasoning(reading: SceneReading, rng: random.Random) -> str:
    """One reasoning question with its step-by-step answer, in the block format ("" if none fits)."""
    if not reading.complete:
        return _fallback_complex(reading)
    makers = [_most_common_colour, _remove_colour, _add_shape, _largest]
    if all(o.box for o in reading.objects):
        makers += [_swap_leftmost, _left_to_right, _lowest, _single_edge]
    rng.shuffle(makers)
    made = next(filter(None, (maker(reading.objects, rng) for maker in makers)), None)
    return format_qa([(made[0], " ".join(made[1:]))]) if made else ""


def _names(objs) -> list[str]:
    return [article(o.described) for o in objs]


def _shapes(k: int) -> str:
    return f"{number_word(k)} {'shape' if k == 1 else 'shapes'}"


def _most_common_colour(objs, rng):
    if len(objs) < 2 or not all(o.color for o in objs):
        return None
    q = rng.choice(["Which colour appears most often among the shapes?",
                    "Which colour is used for the most shapes in this picture?"])
    top = Counter(o.color for o in objs).most_common()
    (first, k), tied = top[0], [c for c, n in top if n == top[0][1]]
    steps = [f"First, list the shapes: {join(_names(objs))}.",
             f"Next, count them by colour: {join([f'{number_word(n)} {c}' for c, n in top])}."]
    conclusion = (f"every shape is {first}: {first} is the only colour, used {number_word(k)} times" if len(top) == 1
                  else f"{first} appears most often, on {number_word(k)} of the {_shapes(len(objs))}" if len(tied) == 1
                  else f"no single colour wins: {join(tied)} each appear {number_word(k)} "
                       f"{'time' if k == 1 else 'times'}")
    return q, *steps, f"So {conclusion}."


def _remove_colour(objs, rng):
    colour = rng.choice(sorted({o.color for o in objs if o.color}) or [None])
    if not all(o.color for o in objs):
        return None
    n, k = len(objs), sum(o.color == colour for o in objs)
    return (f"If every {colour} shape were taken out of the picture, how many shapes would be left?",
            f"There are {number_word(n)} shapes in total: {join(_names(objs))}.",  # "one shapes" too: kept as written
            f"Of these, {number_word(k)} {'is' if k == 1 else 'are'} {colour}.",
            f"Removing {'it' if k == 1 else 'them'} leaves {number_word(n)} minus {number_word(k)}, "
            f"so {_shapes(n - k)} would be left{' and the picture would be empty.' if n == k else '.'}")


def _add_shape(objs, rng):
    shape = rng.choice(sorted({o.shape for o in objs}))
    k = sum(o.shape == shape for o in objs)
    now = f"there is one {shape}" if k == 1 else f"there are {number_word(k)} {plural(shape)}"
    return (f"If one more {shape} were drawn, how many {plural(shape)} would the picture contain?",
            f"Looking at the shapes, {now} at the moment.",
            f"Adding one more makes {number_word(k)} plus one, so the picture would contain "
            f"{number_word(k + 1)} {plural(shape)}.")


def _largest(objs, rng):
    if len(objs) < 2 or not all(o.size for o in objs):
        return None
    top = max(SIZE_RANK[o.size] for o in objs)
    biggest = [i for i, o in enumerate(objs) if SIZE_RANK[o.size] == top]
    if len(biggest) != 1 or not (name := unique_name(objs, biggest[0])):
        return None
    return ("Which shape is the biggest, and how many shapes are smaller than it?",
            f"Compare the sizes: {join([f'the {o.size} {o.category} is {size_word(o.size)}' for o in objs])}.",
            f"Only the {name} is {objs[biggest[0]].size}, so it is the biggest.",
            f"Every other shape is smaller, which makes {_shapes(len(objs) - 1)} smaller than the {name}.")


def _names_left_to_right(objs) -> list[str] | None:
    """The objects' names from left to right, or None when two centres are too close to order for sure."""
    ordered = sorted(objs, key=lambda o: o.center[0])
    xs = [o.center[0] for o in ordered]
    return None if len(objs) < 2 or any(b - a < 0.06 for a, b in zip(xs, xs[1:])) else _names(ordered)


def _swap_leftmost(objs, rng):
    if (names := _names_left_to_right(objs)) is None:
        return None
    return ("If the two leftmost shapes swapped places, which shape would then be furthest to the left?",
            f"From left to right, the shapes are {join(names)}.", f"The two leftmost are {names[0]} and {names[1]}.",
            f"After the swap, {names[1]} takes the leftmost place, so it would be furthest to the left.")


def _left_to_right(objs, rng):
    if (names := _names_left_to_right(objs)) is None:
        return None
    q = rng.choice(["If you read the shapes from left to right, in what order would you meet them?",
                    "Put the shapes in order from left to right."])
    return (q, f"Start at the left edge of the picture: the first shape is {names[0]}.",
            *[f"Moving right, the next one is {name}." for name in names[1:-1]],
            f"The last one, furthest to the right, is {names[-1]}.", f"So the order is {join(names)}.")


def _lowest(objs, rng):
    by_bottom = sorted(objs, key=lambda o: o.box[3], reverse=True)
    if len(objs) < 2 or by_bottom[0].box[3] - by_bottom[1].box[3] < 0.06:
        return None
    low, *others = _names(by_bottom)
    return ("Which shape comes closest to the bottom edge of the picture?",
            f"Compare how far down each shape reaches: {low} reaches lowest, "
            f"while {join(others)} {'stays' if len(others) == 1 else 'stay'} higher up.",
            f"So {low} is the shape closest to the bottom edge.")


def _single_edge(objs, rng):
    if len(objs) != 1 or abs(objs[0].center[0] - 0.5) < 0.08:
        return None
    side = "left" if objs[0].center[0] < 0.5 else "right"
    return (f"Is the {objs[0].category} closer to the left edge or to the right edge of the picture?",
            f"There is only one shape, {_names(objs)[0]}.",
            f"Its middle lies {side} of the picture's vertical centre line.", f"So it is closer to the {side} edge.")


def _fallback_complex(reading: SceneReading) -> str:
    """A real photo: the one safe comparison is which listed object takes up the most room."""
    areas = sorted((((b[2] - b[0]) * (b[3] - b[1]), label) for label, b in reading.boxes), reverse=True)
    if len(areas) < 2 or areas[0][0] - areas[1][0] < 0.05:
        return ""
    most, least = areas[0][1], areas[-1][1]
    steps = [f"The picture contains {join([article(label) for _, label in areas])}.",
             f"Comparing how much of the frame each covers, the {most} is the largest.",
             f"The {least} covers the least space.", f"So the {most} takes up the most room and the {least} the least."]
    q = "Of the things in this picture, which one takes up the most room, and which the least?"
    return format_qa([(q, " ".join(steps))])
