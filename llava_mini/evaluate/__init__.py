"""Notebook 04's evaluation: questions (held-out questions), matching (scoring answers), descriptions (CHAIR),
run (the model answers), report, plots, judge (an LLM judge) and binding (the binding probe)."""

from llava_mini.evaluate.binding import (  # noqa: F401
    DIRECTIONS, patch_tokens, binding_questions, AttentionRead, BindingResult, fit_attention_read, binding_probe,
    RelationRead, relation_questions,
)
from llava_mini.evaluate.descriptions import (  # noqa: F401
    mentioned_objects, score_description, description_metrics, COCO_WORDS_FILE, coco_terms, coco_mentions,
    score_coco_description,
)
from llava_mini.evaluate.judge import (  # noqa: F401
    JUDGE_SYSTEM, JUDGE_RUBRIC, judge_messages, parse_judge_scores, judge_items, judge_answers,
)
from llava_mini.evaluate.matching import normalize, TERMS, scan_terms, conclusion, extract_answer, is_correct  # noqa: F401
from llava_mini.evaluate.matching import answer_terms, is_correct_lenient  # noqa: F401
from llava_mini.evaluate.plots import plot_comparison  # noqa: F401
from llava_mini.evaluate.questions import (  # noqa: F401
    KINDS, scene_objects, Question, questions_for_image, make_questions,
)
from llava_mini.evaluate.report import (  # noqa: F401
    gap_closed, relative_score, summarize_results, save_results, results_table, interpretation,
)
from llava_mini.evaluate.run import (  # noqa: F401
    blank_image, prepare_images, generate_answers, chat, kind_by_kind, score_answers, accuracy_by_kind, evaluate_text_scene,
    evaluate_model, describe_images, evaluate_coco,
)
