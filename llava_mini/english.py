"""The few English rules the world's captions, the teacher and the evaluation share, written once."""

from __future__ import annotations

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")


def number_word(n: int) -> str:
    """3 -> 'three' (digits past twelve)."""
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(noun: str) -> str:
    """'circle' -> 'circles', 'cross' -> 'crosses'."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def article(phrase: str) -> str:
    """'red circle' -> 'a red circle', 'orange star' -> 'an orange star'."""
    return ("an " if phrase[:1] in "aeiou" else "a ") + phrase


def capitalize(text: str) -> str:
    """Upper-case the first letter only ('a red circle' -> 'A red circle')."""
    return text[:1].upper() + text[1:]


def join(items: list[str]) -> str:
    """['a', 'b', 'c'] -> 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
