"""The tiny stand-ins for CLIP and Vicuna, built on the shapes world."""

from llava_mini.backbones.build import (  # noqa: F401
    BACKBONES_DIR, SPECIAL_TOKENS, CHAT_TEMPLATE, BackboneRecipe, patch_coverage, render_pool,
    world_text_corpus, train_tokenizer, contrastive_loss, PatchHeads, make_clip, image_processor_for, to_pixels,
    tokenize_captions, BudgetedCosine, pretrain_vision, make_lm, pack_corpus, pretrain_lm, perplexity,
    patch_features, linear_probe, probe_patches, retrieval_top1, contrastive_demo, world_scenes,
    text_only_chats, build_language_model, build_vision_tower, build_backbones, retune_text_tower, main,
)
