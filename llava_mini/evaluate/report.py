"""Comparing models: gap closed over the blind baseline, the relative score to the text reference, the JSON
summary and the markdown table."""

from pathlib import Path

from llava_mini.evaluate.questions import KINDS
from llava_mini.files import write_json


def gap_closed(result: dict, blind: dict) -> dict[str, float | None]:
    """Per kind (and macro/micro): (acc - blind) / (1 - blind), the share of the no-image baseline's headroom
    the model closes (1 = perfect, 0 = no better than blind, < 0 = worse; None where blind is already perfect)."""
    pairs = [(k, result["accuracy"].get(k), blind["accuracy"].get(k)) for k in result["accuracy"]]
    pairs += [(k, result.get(k), blind.get(k)) for k in ("macro", "micro")]
    return {k: None if acc is None or base is None or base >= 1 else (acc - base) / (1 - base)
            for k, acc, base in pairs}


def relative_score(result: dict, reference: dict) -> dict[str, float | None]:
    """Per kind (and macro/micro): the model's accuracy divided by the text reference's on the same questions:
    LLaVA-Bench's relative score (model / text-only GPT-4 told the scene), offline. None where the reference
    scores 0; above 1 where the eyes beat the text."""
    if [a["question"] for a in result.get("answers", [])] != [a["question"] for a in reference.get("answers", [])]:
        raise ValueError("the relative score needs the model and its text reference on the same questions")
    keys = [*result["accuracy"], "macro", "micro"]
    get = lambda r, k: r["accuracy"].get(k) if k in r["accuracy"] else r.get(k)  # noqa: E731
    return {k: get(result, k) / get(reference, k) if get(reference, k) else None for k in keys}


def summarize_results(results: dict[str, dict], blind_name: str = "blind") -> dict[str, dict]:
    """What goes into a JSON file: per model its accuracies, counts, description metrics (with three
    examples) and, when a blind entry is present, gap closed; without the per-answer rows and reviews."""
    out = {}
    for name, r in results.items():
        entry = out[name] = {k: r.get(k) for k in ("accuracy", "n", "micro", "macro", "blind", "settings")}
        if r.get("description"):
            examples = [{k: item[k] for k in ("image_id", "description", "mentioned", "hallucinated")}
                        for item in r["description"].get("items", [])[:3]]
            entry["description"] = {**{k: v for k, v in r["description"].items() if k != "items"}, "examples": examples}
        if blind_name in results and name != blind_name:
            entry["gap_closed"] = gap_closed(r, results[blind_name])
        if r.get("relative_to"):
            entry["relative_score"] = relative_score(r, results[r["relative_to"]])
        if r.get("judge"):
            entry["judge"] = {k: v for k, v in r["judge"].items() if k != "reviews"}
    return out


def save_results(results: dict[str, dict], path: str | Path, blind_name: str = "blind") -> Path:
    """Write ``summarize_results`` as JSON (README numbers come from this file, not from memory)."""
    return write_json(path, summarize_results(results, blind_name), indent=2)


def _table(head: list[str], rows: list[list]) -> list[str]:
    """Markdown lines; numbers are fractions, shown in % (None: '-')."""
    cell = lambda v: v if isinstance(v, str) else "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    return [f"| {' | '.join(head)} |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
            *(f"| {' | '.join(map(cell, row))} |" for row in rows)]


def results_table(results: dict[str, dict], blind_name: str = "blind") -> str:
    """A markdown table: one row per model, accuracy (%) per question kind, macro and micro, and the
    description metrics when present; then, with a blind entry, a table of gap closed per kind, and for each
    model with a "relative_to" entry (the name of its text reference among the results), its relative score."""
    kinds = [k for k in KINDS if any(k in r["accuracy"] for r in results.values())]
    desc = ["recall", "chair_i", "chair_s"] if any(r.get("description") for r in results.values()) else []
    rows = [[name, *(r["accuracy"].get(k) for k in kinds), r.get("macro"), r.get("micro"),
             *((r.get("description") or {}).get(m) for m in desc)] for name, r in results.items()]
    lines = _table(["model", *kinds, "macro", "micro", *(m.replace("chair", "CHAIR") for m in desc)], rows)
    others = [name for name in results if name != blind_name]
    if blind_name in results and others:
        gaps = {name: gap_closed(results[name], results[blind_name]) for name in others}
        lines += ["", f"Gap closed, (acc - {blind_name}) / (1 - {blind_name}), in %:", "",
                  *_table(["model", *kinds, "macro", "micro"],
                          [[name, *(gap.get(k) for k in [*kinds, "macro", "micro"])] for name, gap in gaps.items()])]
    relative = {name: relative_score(r, results[r["relative_to"]]) for name, r in results.items() if r.get("relative_to")}
    if relative:
        lines += ["", "Relative score, the model's accuracy / its text reference's (told the scene as text), in %:", "",
                  *_table(["model", *kinds, "macro", "micro"],
                          [[name, *(rel.get(k) for k in [*kinds, "macro", "micro"])] for name, rel in relative.items()])]
    return "\n".join(lines)


def interpretation(results: dict[str, dict], model: str, reference: str, blind: str = "blind") -> str:
    """Markdown sentences computed from the numbers: how ``model`` compares with its text ``reference`` (the
    relative score) and with the ``blind`` baseline, kind by kind, so the verdict changes when the numbers do."""
    r, ref, base = results[model], results[reference], results[blind]
    rel, gap = relative_score(r, ref), gap_closed(r, base)
    # A kind the text reference itself answers no better than blind says nothing about the eyes: the LM is
    # the limit there, and a relative score near 1 only means both are at chance.
    ref_gap = gap_closed(ref, base)
    lm_limited = [k for k in r["accuracy"] if ref_gap[k] is not None and ref_gap[k] < 0.1]
    bins = {"reads it from the pixels about as well as from text (relative score >= 0.9)": [],
            "learned it in part (relative score 0.6 to 0.9)": [], "mostly not learned (relative score < 0.6)": []}
    for k in (k for k in r["accuracy"] if k not in lm_limited):
        bins[list(bins)[0 if (rel[k] or 0) >= 0.9 else 1 if (rel[k] or 0) >= 0.6 else 2]].append(
            f"{k} {100 * r['accuracy'][k]:.0f}% (text {100 * ref['accuracy'][k]:.0f}%)")
    near_blind = [k for k in r["accuracy"] if gap[k] is not None and gap[k] < 0.1]
    lines = [f"**{model}** answers {100 * r['micro']:.1f}% of the questions; told each scene as text, the same "
             f"language model answers {100 * ref['micro']:.1f}%, so the relative score is {rel['micro']:.2f}. "
             f"Blind, it answers {100 * base['micro']:.1f}%."]
    lines += [f"- {verdict}: {', '.join(kinds)}." for verdict, kinds in bins.items() if kinds]
    if lm_limited:
        lines.append("- Limited by the language model (told the scene as text, it is no better than blind): "
                     + ", ".join(f"{k} (text {100 * ref['accuracy'][k]:.0f}%, blind {100 * base['accuracy'][k]:.0f}%)"
                                 for k in lm_limited) + ".")
    lines.append(f"- No better than blind (less than 10% of the gap closed): {', '.join(near_blind)}." if near_blind
                 else "- Every kind closes at least 10% of the gap to blind: the model looks at the image for each.")
    return "\n".join(lines)
