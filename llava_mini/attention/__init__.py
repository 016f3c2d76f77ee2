"""Notebook 05, where the model looks: extract (answer-to-image attention), grounding, masking, plots, and the
explorer (notebooks 04 and 05: any image, any question, the answer and where it looked)."""

from llava_mini.attention.extract import (  # noqa: F401
    use_eager_attention, patch_grid, AnswerAttention, normalise_over_image, attention_to_image,
    answer_attentions, inspect_answers, inspect_answer,
)
from llava_mini.attention.grounding import (  # noqa: F401
    square_box, box_coverage, grounding_score, grounding_by_layer, attention_rollout, GroundingQuestion,
    grounding_questions, coco_grounding_questions, GroundingResult, answer_word_token, run_grounding, summarize_grounding,
)
from llava_mini.attention.masking import (  # noqa: F401
    top_patches, mask_patches, mean_fill, masking_experiment, masking_example, interpret,
)
from llava_mini.attention.plots import (  # noqa: F401
    model_view, pixels_to_image, overlay, plot_answer_layers, plot_question_layers, plot_token_layers, plot_grounding,
    plot_grounding_by_correctness, plot_masking, plot_masking_example,
)
from llava_mini.attention.explore import eager_attention, new_scene, ask_and_show, explorer  # noqa: F401
