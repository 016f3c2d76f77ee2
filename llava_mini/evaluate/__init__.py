"""Held-out questions, scoring, descriptions, the judge and reports (notebook 04)."""

from llava_mini.evaluate.binding import (  # noqa: F401
    DIRECTIONS, patch_tokens, binding_questions, AttentionRead, BindingResult, fit_attention_read, binding_probe,
)
from llava_mini.evaluate.core import (  # noqa: F401
    KINDS, scene_objects, Question, questions_for_image, make_questions, normalize, TERMS, extract_answer,
    is_correct, mentioned_objects, score_description, description_metrics, blank_image, prepare_images,
    generate_answers, evaluate_text_scene, chat, score_answers, accuracy_by_kind, evaluate_model, gap_closed,
    summarize_results, save_results, results_table, plot_comparison, JUDGE_SYSTEM, JUDGE_RUBRIC, judge_messages,
    parse_judge_scores, judge_items, judge_answers,
)
