"""Tests for llava_mini.attention: positions, shapes, row sums, geometry and the grounding score.

Tiny random towers built here (no hub, no checkpoints); a four-image shapes world in a tmp folder.
"""

import math

import matplotlib
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from llava_mini.attention import (  # noqa: E402
    AnswerAttention, attention_rollout, attention_to_image, box_coverage, grounding_by_layer,
    grounding_questions, grounding_score, inspect_answer, inspect_answers, mask_patches, masking_example,
    masking_experiment, mean_fill, patch_grid, run_grounding, square_box, summarize_grounding, top_patches,
    use_eager_attention,
)
from llava_mini.evaluate import is_correct  # noqa: E402
from llava_mini.model import build_prompt, generate_ids, image_to_pixel_values, left_pad  # noqa: E402
from llava_mini.model import LlavaMini  # noqa: E402
from stand_ins import IMAGE_SIZE, PATCH, bpe_tokenizer, tiny_llama, tiny_llava, tiny_processor, tiny_vision  # noqa: E402

N_IMAGE = (IMAGE_SIZE // PATCH) ** 2  # 16 image tokens, a 4x4 grid


@pytest.fixture(scope="module")
def tokenizer():
    return bpe_tokenizer(["USER: What colour is the circle? ASSISTANT: The circle is red.",
                          "Which shape is the blue object? The blue object is a star."] * 4)


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


def make_model(tokenizer, attn_implementation="eager", seed=0) -> LlavaMini:
    vision = tiny_vision(seed=seed)
    lm = tiny_llama(len(tokenizer), seed=None, num_hidden_layers=3, attn_implementation=attn_implementation)
    # large projector weights: image tokens matter
    return tiny_llava(vision, lm, tokenizer, projector_std=0.5).eval()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def random_image(seed, size=(IMAGE_SIZE, IMAGE_SIZE)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(size[1], size[0], 3, generator=g) * 255).byte().numpy())


# ----------------------------------------------------------------------------- positions


def test_rows_are_the_queries_before_each_answer_token_and_columns_the_image_tokens():
    """A hand-made attention tensor whose entries encode (layer, head, query, key)."""
    layers, heads, T = 2, 3, 12
    l, h, q, k = torch.meshgrid(*(torch.arange(n) for n in (layers, heads, T, T)), indexing="ij")
    code = (l * 1_000_000 + h * 10_000 + q * 100 + k).float()
    per_layer = [code[i].unsqueeze(0) for i in range(layers)]         # (B=1, heads, T, T) each
    image_positions = torch.tensor([2, 3, 4, 5])
    prompt_length, answer_length = 8, 3                               # answer tokens at 8, 9, 10
    out = attention_to_image(per_layer, image_positions, prompt_length, answer_length)
    assert out.shape == (layers, heads, answer_length, 4)
    for li in range(layers):
        for hi in range(heads):
            for t in range(answer_length):
                for n, key in enumerate(image_positions.tolist()):
                    # token t sits at 8 + t; the query that produced it is at 7 + t
                    assert out[li, hi, t, n] == li * 1_000_000 + hi * 10_000 + (prompt_length - 1 + t) * 100 + key


def test_attention_to_image_refuses_missing_weights_and_short_sequences():
    with pytest.raises(ValueError, match="eager"):
        attention_to_image([None], torch.tensor([0]), 3, 1)
    with pytest.raises(ValueError, match="longer"):
        attention_to_image([torch.rand(1, 1, 4, 4)], torch.tensor([0]), 4, 2)  # needs query row 4


def test_image_positions_are_where_the_prompt_holds_the_image_tokens(model, tokenizer, processor):
    result = inspect_answer(model, tokenizer, processor, random_image(0), "What colour is the circle?",
                            answer="The circle is red.")
    prompt = build_prompt(tokenizer, "What colour is the circle?", N_IMAGE)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    assert result.prompt_length == len(prompt)
    assert result.image_positions.tolist() == (prompt == image_id).nonzero().squeeze(-1).tolist()
    start = result.image_positions[0].item()
    assert result.image_positions.tolist() == list(range(start, start + N_IMAGE))  # one contiguous block
    assert tokenizer.decode(result.answer_ids).strip() == "The circle is red."  # EOS dropped
    assert result.answer_text == "The circle is red."


def test_greedy_answer_tokens_are_the_argmax_of_the_rows_we_read(model, tokenizer, processor):
    """The row at P - 1 + t is the one whose logits chose answer token t."""
    result = inspect_answer(model, tokenizer, processor, random_image(1), "What colour is the circle?",
                            max_new_tokens=5)
    assert len(result.answer_ids) > 0
    prompt = build_prompt(tokenizer, "What colour is the circle?", N_IMAGE)
    ids = torch.cat([prompt, torch.tensor(result.answer_ids)])[None]
    pixel_values = image_to_pixel_values(random_image(1), processor)[None]
    with torch.no_grad():
        logits = model(ids, pixel_values, return_logits=True).logits[0]
    rows = torch.arange(len(result.answer_ids)) + len(prompt) - 1
    assert logits[rows].argmax(-1).tolist() == result.answer_ids


def test_teacher_forced_rows_equal_the_rows_generation_computed(model, tokenizer, processor):
    """Step-by-step generation with a KV cache gives the same attention rows as one forward pass."""
    image, question = random_image(2), "Which shape is the blue object?"
    result = inspect_answer(model, tokenizer, processor, image, question, max_new_tokens=4)
    assert len(result.answer_ids) >= 2  # several decoding steps are compared
    prompt = build_prompt(tokenizer, question, N_IMAGE)
    pixel_values = image_to_pixel_values(image, processor)[None]
    with torch.no_grad():
        embeds = model.embed_inputs(prompt[None], pixel_values)
        out = model.language_model.generate(inputs_embeds=embeds, max_new_tokens=len(result.answer_ids),
                                            do_sample=False, output_attentions=True, return_dict_in_generate=True,
                                            pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    assert out.sequences[0].tolist() == result.answer_ids
    image_cols = result.image_positions
    for t in range(len(result.answer_ids)):
        step = out.attentions[t]                         # per layer (1, heads, queries, keys)
        for layer, weights in enumerate(step):
            row = weights[0, :, -1, image_cols]          # the last query of the step produced token t
            torch.testing.assert_close(row, result.attentions[layer, :, t], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- shapes and sums


def test_shapes_and_row_sums(model, tokenizer, processor):
    result = inspect_answer(model, tokenizer, processor, random_image(3), "What colour is the circle?",
                            answer="The circle is red.")
    L = len(result.answer_ids)
    assert result.attentions.shape == (3, 4, L, N_IMAGE)  # (layers, heads, answer_len, N)
    assert result.grid == (4, 4) == patch_grid(model)
    assert len(result.answer_tokens) == L
    share = result.image_share
    assert share.shape == (3, 4, L)
    assert (share > 0).all() and (share <= 1 + 1e-6).all()
    torch.testing.assert_close(result.image_distribution().sum(-1), torch.ones(3, 4, L))
    assert result.grid_map().shape == (4, 4)
    torch.testing.assert_close(result.grid_map().sum(), torch.tensor(1.0))
    torch.testing.assert_close(result.grid_map(layer=1, head=2, token=0).sum(), torch.tensor(1.0))
    assert result.grid_map(normalise=False).sum() <= 1 + 1e-6

    # The full rows (all keys, text and image) are softmax distributions: each sums to 1.
    prompt = build_prompt(tokenizer, "What colour is the circle?", N_IMAGE)
    ids = torch.cat([prompt, torch.tensor(result.answer_ids)])[None]
    with torch.no_grad():
        out = model(ids, image_to_pixel_values(random_image(3), processor)[None], output_attentions=True)
    for layer in out.attentions:
        torch.testing.assert_close(layer.sum(-1), torch.ones(layer.shape[:-1]))


def test_batched_right_padding_changes_nothing(model, tokenizer, processor):
    images = [random_image(4), random_image(5, size=(IMAGE_SIZE + 8, IMAGE_SIZE))]
    questions = ["What colour is the circle?", "Which shape is the blue object in this picture?"]
    answers = ["The circle is red.", "It is a star."]
    batched = inspect_answers(model, tokenizer, processor, images, questions, answers)
    for i in range(2):
        single = inspect_answer(model, tokenizer, processor, images[i], questions[i], answer=answers[i])
        assert single.answer_ids == batched[i].answer_ids
        torch.testing.assert_close(single.attentions, batched[i].attentions, atol=1e-5, rtol=1e-4)


def test_sdpa_gives_no_weights_until_switched_to_eager(tokenizer, processor):
    model = make_model(tokenizer, attn_implementation="sdpa")
    with pytest.raises(ValueError, match="eager"):
        inspect_answer(model, tokenizer, processor, random_image(6), "What colour is the circle?", answer="Red.")
    use_eager_attention(model)
    assert model.language_model.config._attn_implementation == "eager"
    result = inspect_answer(model, tokenizer, processor, random_image(6), "What colour is the circle?", answer="Red.")
    assert result.attentions.shape[:2] == (3, 4)


# ----------------------------------------------------------------------------- grid, geometry, score


def hand_made(weights: torch.Tensor, grid=(4, 4)) -> AnswerAttention:
    """An AnswerAttention around given (layers, heads, answer_len, N) weights."""
    L = weights.shape[2]
    return AnswerAttention(list(range(L)), ["x"] * L, "x", weights, grid, torch.arange(grid[0] * grid[1]), 1)


def test_grid_map_is_row_major_patch_order():
    weights = torch.zeros(1, 1, 1, 16)
    weights[..., 1 * 4 + 3] = 0.3  # patch at row 1, column 3
    grid = hand_made(weights).grid_map()
    assert grid[1, 3] == 1.0 and grid.sum() == 1.0  # renormalised over the image


def test_box_coverage_counts_fractions_of_patches():
    # a 64 px image on a 4x4 grid: 16 px patches; box x 16..48, y 0..24 -> columns 1-2, row 0 full, row 1 half
    cov = box_coverage((16, 0, 32, 24), 64, 64, (4, 4))
    expected = torch.zeros(4, 4)
    expected[0, 1:3] = 1.0
    expected[1, 1:3] = 0.5
    torch.testing.assert_close(cov, expected)
    assert math.isclose(float(cov.sum()) / 16, (32 * 24) / (64 * 64))  # box share = area share


def test_box_coverage_follows_the_padding_to_a_square():
    # 64 wide x 32 high: padded to 64 x 64 with the content 16 px down; a box over the whole image
    cov = box_coverage((0, 0, 64, 32), 64, 32, (4, 4))
    assert cov[0].sum() == 0 and cov[3].sum() == 0 and (cov[1:3] == 1).all()


def test_grounding_score_known_answers():
    cov = box_coverage((0, 0, 16, 16), 32, 32, (4, 4))  # the 2x2 top-left patches: box share 4/16
    box_share = 0.25
    inside = torch.zeros(16)
    inside[[0, 1, 4, 5]] = 1.0
    assert math.isclose(float(grounding_score(inside, cov)), 1 / box_share)
    single = torch.zeros(16)
    single[5] = 7.0  # all mass on one fully covered patch, any scale
    assert math.isclose(float(grounding_score(single, cov)), 1 / box_share)
    assert math.isclose(float(grounding_score(torch.full((16,), 0.01), cov)), 1.0, rel_tol=1e-6)  # uniform
    outside = 1.0 - inside
    assert float(grounding_score(outside, cov)) == 0.0
    # batched over leading dims; coverage-weighted: a half-covered patch counts half
    half = box_coverage((0, 0, 12, 8), 32, 32, (4, 4))  # patch 0 full... patch (0,1) half
    only_half = torch.zeros(2, 3, 16)
    only_half[..., 1] = 1.0
    score = grounding_score(only_half, half)
    assert score.shape == (2, 3)
    torch.testing.assert_close(score, torch.full((2, 3), 0.5 / (float(half.sum()) / 16)))


def test_grounding_score_ignores_the_text_share_and_rejects_empty_boxes():
    cov = box_coverage((0, 0, 16, 16), 32, 32, (4, 4))
    weights = torch.rand(16)
    assert math.isclose(float(grounding_score(weights, cov)), float(grounding_score(weights * 0.1, cov)), rel_tol=1e-6)
    with pytest.raises(ValueError, match="no patch"):
        grounding_score(weights, torch.zeros(16))
    with pytest.raises(ValueError, match="patches"):
        grounding_score(torch.rand(9), cov)


def test_grounding_by_layer_averages_heads_and_tokens():
    cov = box_coverage((0, 0, 16, 16), 32, 32, (4, 4))
    weights = torch.full((2, 2, 3, 16), 1 / 16)          # layer 0: uniform everywhere
    weights[1] = 0
    weights[1, :, :, 0] = 1.0                            # layer 1: everything on patch 0 (inside)
    weights[1, 0, 0] = 0
    weights[1, 0, 0, 15] = 1.0                           # ... except one head/token, outside
    by_layer = grounding_by_layer(hand_made(weights), cov)
    torch.testing.assert_close(by_layer, torch.tensor([1.0, 4.0 * 5 / 6]))


def test_top_patches_and_masking():
    weights = torch.zeros(1, 1, 1, 16)
    weights[..., [2, 9]] = torch.tensor([0.5, 0.2])
    assert sorted(top_patches(hand_made(weights), 2).tolist()) == [2, 9]
    pixel_values = torch.rand(3, 32, 32)
    fill = torch.tensor([0.1, 0.2, 0.3])
    masked = mask_patches(pixel_values, [9], (4, 4), fill)  # row 2, column 1
    assert (masked[:, 16:24, 8:16] == fill.reshape(3, 1, 1)).all()
    keep = torch.ones(32, 32, dtype=torch.bool)
    keep[16:24, 8:16] = False
    assert torch.equal(masked[:, keep], pixel_values[:, keep])


def test_mean_fill_is_about_zero(processor):
    assert mean_fill(processor).abs().max() < 0.03


def test_attention_rollout_rows_are_distributions():
    torch.manual_seed(0)
    layers = [torch.softmax(torch.randn(2, 5, 5), -1) for _ in range(3)]
    rollout = attention_rollout(layers)
    torch.testing.assert_close(rollout.sum(-1), torch.ones(5))
    torch.testing.assert_close(attention_rollout(layers[:1], residual=0.0), layers[0].mean(0))


# ----------------------------------------------------------------------------- held-out experiment


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from llava_mini.world import read_split
    from llava_mini.world import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, {"test": 12}, seed=0)
    return read_split(root, "test")


def test_grounding_questions_name_one_object_and_carry_its_box(world):
    questions = grounding_questions(world.records, n=8)
    assert 0 < len(questions) <= 8
    for q in questions:
        target = [o for o in q.record.objects if o.category == q.category and tuple(o.bbox) == q.bbox]
        assert len(target) == 1
        word = q.category.split()[1] if q.kind == "colour" else q.category.split()[0]
        assert word in q.question.lower()  # the question names the object's other attribute
        assert q.expected == (target[0].attributes["color"] if q.kind == "colour" else target[0].attributes["shape"])


def test_run_grounding_summary_and_masking_end_to_end(model, tokenizer, processor, world):
    questions = grounding_questions(world.records, n=6)
    results = run_grounding(model, tokenizer, processor, questions, max_new_tokens=3, batch_size=4)
    assert len(results) == len(questions)  # random LMs rarely stop at once; if they do, fewer
    for r in results:
        assert r.by_layer.shape == (3,)
        assert r.coverage.shape == (4, 4) and r.coverage.sum() > 0
    summary = summarize_grounding(results)
    assert summary["n_questions"] == len(results) == summary["n_correct"] + summary["n_wrong"]
    assert len(summary["grounding_by_layer"]) == len(summary["image_share_by_layer"]) == 3
    assert all(0 < s <= 1 for s in summary["image_share_by_layer"])
    assert summary["n_answer_word"] == sum(r.answer_token is not None for r in results)
    report = masking_experiment(model, tokenizer, processor, results, ks=(2,), max_new_tokens=3)
    assert set(report) == {"n_questions", "unmasked_accuracy", "box", "k=2"}
    assert report["k=2"]["top_attended"]["patches"] == report["k=2"]["random"]["patches"] == 2
    for entry in (report["box"], report["k=2"]["top_attended"], report["k=2"]["random"]):
        assert 0 <= entry["accuracy"] <= 1 and 0 <= entry["changed"] <= 1


def test_system_prompt_reaches_prompts_and_reference_answers(model, tokenizer, processor):
    result = inspect_answer(model, tokenizer, processor, random_image(7), "What colour is the circle?",
                            answer="Red.", system_prompt="Answer briefly.")
    plain = inspect_answer(model, tokenizer, processor, random_image(7), "What colour is the circle?", answer="Red.")
    assert result.answer_ids == plain.answer_ids
    assert result.prompt_length > plain.prompt_length
    assert result.image_positions[0] > plain.image_positions[0]  # the system message comes first


def test_answer_word_token_finds_the_token_that_names_the_answer():
    def att(tokens):
        return AnswerAttention(list(range(len(tokens))), tokens, "".join(tokens), torch.zeros(1, 1, len(tokens), 16),
                               (4, 4), torch.arange(16), 1)

    from llava_mini.attention import answer_word_token

    assert answer_word_token(att([" The", " star", " is", " red", "."]), "colour") == 3
    assert answer_word_token(att([" The", " star", " is", " red", "."]), "shape") == 1
    assert answer_word_token(att([" It", " is", " pur", "ple", "."]), "colour") == 2  # first piece of the word
    assert answer_word_token(att([" I", " do", " not", " know"]), "colour") is None
    # an answer that scans first: the word in its conclusion, not the other objects' colours before it
    scan = ["The", " red", " one", " is", " a", " star", ";", " the", " blue", " one", " is", " a", " cross", ",",
            " so", " the", " cross", " is", " blue", "."]
    assert answer_word_token(att(scan), "colour") == 18


# ----------------------------------------------------------------------------- one generation function


def test_greedy_answers_are_those_of_llavamini_generate_on_left_padded_batches(tokenizer, processor):
    """inspect_answers decodes through model.generate_ids: the same ids as LlavaMini.generate on left-padded
    prompts of different lengths (what the removed greedy_answer_ids did), batch boundaries included."""
    model = make_model(tokenizer, seed=1)
    questions = ["What colour is the circle?", "Which shape is the blue object in this picture, please?", "Red?"]
    images = [random_image(20 + i) for i in range(3)]
    results = inspect_answers(model, tokenizer, processor, images, questions, max_new_tokens=5, batch_size=2,
                              system_prompt="Answer briefly.")
    prompts = [build_prompt(tokenizer, q, N_IMAGE, system_prompt="Answer briefly.") for q in questions]
    assert len({len(p) for p in prompts}) == 3  # left padding really happens
    pixel_values = torch.stack([image_to_pixel_values(im, processor) for im in images])
    batch = left_pad(prompts, tokenizer.pad_token_id)
    new = model.generate(batch["input_ids"], pixel_values, attention_mask=batch["attention_mask"], max_new_tokens=5,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id}
    expected = [row[: next((k for k, t in enumerate(row) if t in stop), len(row))] for row in new.tolist()]
    assert [r.answer_ids for r in results] == expected
    assert len({tuple(r.answer_ids) for r in results}) > 1  # the images and prompts do change the answers


# ----------------------------------------------------------------------------- boxes, masking example, figures


def test_square_box_moves_the_box_into_the_padded_square():
    assert square_box((4, 2, 10, 6), 64, 32) == (4.0, 18.0, 10.0, 6.0)   # 16 px of padding above
    assert square_box((4, 2, 10, 6), 32, 64) == (20.0, 2.0, 10.0, 6.0)   # 16 px to the left
    assert square_box((4, 2, 10, 6), 40, 40) == (4.0, 2.0, 10.0, 6.0)


@pytest.fixture(scope="module")
def grounded(model, tokenizer, processor, world):
    return run_grounding(model, tokenizer, processor, grounding_questions(world.records, n=4), max_new_tokens=3,
                         batch_size=3, progress=True)


def test_run_grounding_scores_answers_with_notebook_04s_matcher(grounded):
    assert grounded and all(r.correct == is_correct(r.question.kind, r.answer, r.question.expected) for r in grounded)


def test_masking_example_masks_the_top_and_random_patches_and_answers_each(model, tokenizer, processor, grounded):
    result = grounded[0]
    versions = masking_example(model, tokenizer, processor, result, k=3, seed=1, max_new_tokens=3)
    assert list(versions) == ["as given", "top 3 attended masked", "3 random masked"]
    clean = image_to_pixel_values(result.question.record.load_image(), processor)
    torch.testing.assert_close(versions["as given"][0], clean)
    fill = mean_fill(processor)
    expected_top = mask_patches(clean, top_patches(result.attention, 3), (4, 4), fill)
    torch.testing.assert_close(versions["top 3 attended masked"][0], expected_top)
    random_patches = torch.randperm(16, generator=torch.Generator().manual_seed(1))[:3]
    torch.testing.assert_close(versions["3 random masked"][0], mask_patches(clean, random_patches, (4, 4), fill))
    prompt = build_prompt(tokenizer, result.question.question, N_IMAGE)
    for pixel_values, answer in versions.values():  # answered one at a time, the same as in the batch
        (ids,) = generate_ids(model, tokenizer, [prompt], pixel_values=pixel_values[None], max_new_tokens=3)
        assert answer == tokenizer.decode(ids, skip_special_tokens=True).strip()


def test_every_figure_draws_and_saves(model, tokenizer, processor, grounded, tmp_path):
    """Smoke test of notebook 05's figures on a tiny model (their look is checked by eye in the notebook)."""
    import matplotlib.pyplot as plt

    from llava_mini.attention import (
        plot_grounding, plot_grounding_by_correctness, plot_masking, plot_masking_example, plot_question_layers,
        plot_token_layers,
    )

    summaries = {"tiny": summarize_grounding(grounded)}
    entry = {"accuracy": 0.5, "changed": 0.25, "patches": 2.0}
    report = {"n_questions": 4, "unmasked_accuracy": 0.75, "box": {**entry, "patches": 3.5},
              "k=2": {"top_attended": entry, "random": entry}}  # the shape masking_experiment returns
    figures = {
        "layers": lambda p: plot_question_layers(grounded[:2], processor, path=p, title="t", answer_word=True),
        "tokens": lambda p: plot_token_layers(grounded[0], processor, path=p),
        "grounding": lambda p: plot_grounding(summaries, path=p),
        "right_wrong": lambda p: plot_grounding_by_correctness(summaries, path=p),
        "masking": lambda p: plot_masking(report, path=p),
        "example": lambda p: plot_masking_example(model, tokenizer, processor, grounded[0], k=2, path=p,
                                                  max_new_tokens=3),
    }
    for name, draw in figures.items():
        path = tmp_path / "figures" / f"{name}.png"  # the folder is made on demand
        fig = draw(path)
        assert path.stat().st_size > 0 and fig.axes
        plt.close(fig)
    assert len(plot_question_layers(grounded[:2], processor).axes) == 2 * (3 + 1)  # image + one map per layer


def test_interpret_states_what_the_numbers_show():
    from llava_mini.attention import interpret

    def summary(acc, word):
        return {"accuracy": acc, "grounding_by_layer_answer_word": word, "max_possible_mean": 9.3}
    masking = {"unmasked_accuracy": 0.8, "box": {"accuracy": 0.2},
               "k=4": {"top_attended": {"changed": 0.30}, "random": {"changed": 0.05}}}
    text = interpret({"a": summary(0.4, [1.0, 1.2]), "b": summary(0.8, [1.1, 2.5])}, masking, "a", "b")
    assert "stage 2 points at the object more" in text and "attended patches matter more" in text
    assert "from 80% to 20%: the answers come from the object's pixels" in text
    masking["k=4"]["top_attended"]["changed"], masking["box"]["accuracy"] = 0.06, 0.75
    text = interpret({"a": summary(0.4, [2.0]), "b": summary(0.8, [1.5])}, masking, "a", "b")
    assert "does not point at the object more" in text and "about the same" in text and "barely depend" in text
