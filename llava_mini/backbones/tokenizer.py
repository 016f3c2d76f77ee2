"""The tokenizer both backbones use: byte-level BPE trained on world text, with a Vicuna-like chat template."""

from llava_mini.teacher import IMAGE_TOKEN

SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
# Vicuna-like: "USER: ... \nASSISTANT: ...</s>\n". The answer is everything after "ASSISTANT:".
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n"
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }}\n"
    "{% else %}ASSISTANT: {{ m['content'] }}</s>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any text encodes; no unknown words) wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # </s> must not get id 2: CLIP's text tower treats eos_token_id == 2 as a legacy config and pools at
    # the *largest token id* instead of at </s> (transformers keeps that for old checkpoints).
    specials = [SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "unk_token")] + [IMAGE_TOKEN, SPECIAL_TOKENS["eos_token"]]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS, additional_special_tokens=[IMAGE_TOKEN])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "right"
    return fast
