"""The tiny stand-ins for CLIP and Vicuna, built on the shapes world (notebook 03 shows what they learned): recipe
(sizes, the training loop), vision (CLIP), lm (Vicuna, the tokenizer), probes (what the tower learned), build."""

from llava_mini.backbones.build import (  # noqa: F401
    BACKBONES_DIR, build_language_model, build_vision_tower, build_backbones, main,
)
from llava_mini.backbones.lm import (  # noqa: F401
    SPECIAL_TOKENS, CHAT_TEMPLATE, INSTRUCTION_WORDS, world_text_corpus, scene_record, text_scene_records,
    with_context, render_chat, train_tokenizer, make_lm, pack_corpus, pack_examples, pretrain_lm, perplexity,
)
from llava_mini.backbones.probes import (  # noqa: F401
    patch_features, linear_probe, probe_patches, retrieval_top1, contrastive_demo,
)
from llava_mini.backbones.recipe import BackboneRecipe, train_in_budget  # noqa: F401
from llava_mini.backbones.vision import (  # noqa: F401
    patch_coverage, render_pool, contrastive_loss, PatchHeads, make_clip, image_processor_for, to_pixels,
    tokenize_captions, pretrain_vision,
)
