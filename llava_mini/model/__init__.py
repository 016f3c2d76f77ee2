"""LLaVA: vision tower, projector, language model, and conversations as tensors (notebook 03)."""

from llava_mini.model.conversation import (  # noqa: F401
    IGNORE_INDEX, TokenizationMismatch, RecordTooLong, to_messages, image_token_id, add_image_token, render_ids,
    EncodedConversation, encode_conversation, build_prompt, collate_prompts, expand_to_square, mean_colour,
    image_to_pixel_values, load_image, LlavaInstructDataset, LlavaCollator, draw_token_layout,
)
from llava_mini.model.generate import pad_id, left_pad, generate_ids, decode  # noqa: F401
from llava_mini.model.llava import (  # noqa: F401
    IGNORE_INDEX, PROJECTOR_TYPES, CONFIG_NAME, PROJECTOR_WEIGHTS, Projector, LlavaMiniConfig, LlavaMiniOutput,
    LlavaMini, load_vision_tower, build,
)
