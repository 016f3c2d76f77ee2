"""Where the model looks: attention from answer tokens to image patches (notebook 05)."""

from llava_mini.attention.core import (  # noqa: F401
    unwrap, use_eager_attention, patch_grid, AnswerAttention, normalise_over_image, attention_to_image,
    greedy_answer_ids, answer_attentions, inspect_answers, inspect_answer, box_coverage, grounding_score,
    grounding_by_layer, attention_rollout, GroundingQuestion, grounding_questions, default_matcher,
    GroundingResult, answer_word_token, run_grounding, summarize_grounding, write_json, top_patches,
    mask_patches, mean_fill, masking_experiment, model_view, overlay, plot_question_layers, plot_token_layers,
    plot_grounding, plot_grounding_by_correctness, plot_masking, pixels_to_image, plot_masking_example,
)
