"""Notebook 03, the LLaVA model: projector, llava (composition, splice, saving), conversation (records -> ids
and labels), images, data (dataset, collator), generate (the one decoding loop), export (to transformers and peft),
recompute (what gradient checkpointing keeps), plots."""

from llava_mini.model.conversation import (  # noqa: F401
    IGNORE_INDEX, TokenizationMismatch, RecordTooLong, to_messages, image_token_id, add_image_token, render_ids,
    EncodedConversation, encode_conversation, build_prompt, answer_spans, answer_labels,
)
from llava_mini.model.data import LlavaInstructDataset, LlavaCollator  # noqa: F401
from llava_mini.model.export import (  # noqa: F401
    ADAPTER_DIR, typed_chat_template, export_to_transformers, export_adapters,
)
from llava_mini.model.generate import pad_id, left_pad, generate_ids, decode  # noqa: F401
from llava_mini.model.images import expand_to_square, mean_colour, image_to_pixel_values, load_image  # noqa: F401
from llava_mini.model.llava import (  # noqa: F401
    CONFIG_NAME, PROJECTOR_WEIGHTS, LlavaMiniConfig, LlavaMiniOutput, LlavaMini, load_vision_tower, build,
)
from llava_mini.model.plots import draw_token_layout  # noqa: F401
from llava_mini.model.projector import PROJECTOR_TYPES, Projector  # noqa: F401
