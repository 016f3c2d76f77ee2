"""Ask the model anything about an image and see where it looked (notebooks 04 and 05): a held-out image or a
scene drawn fresh from the world's vocabulary, and any question. Headless (nbval, a script) ``explorer`` runs
once on the values it is given; where ipywidgets can draw (JupyterLab, Colab) it adds controls to ask again."""

from contextlib import contextmanager
from typing import Sequence

import numpy as np
from PIL import Image

from llava_mini.attention.extract import AnswerAttention, inspect_answer
from llava_mini.attention.plots import plot_answer_layers
from llava_mini.train import unwrap
from llava_mini.world import ImageRecord, WorldConfig, render_scene, sample_scene


@contextmanager
def eager_attention(model):
    """Eager attention inside the block (its weights can be read), the model's own kernel again after it."""
    lm = unwrap(model).language_model
    before = lm.config._attn_implementation
    lm.set_attn_implementation("eager")
    try:
        yield model
    finally:
        lm.set_attn_implementation(before)


def new_scene(seed: int, config: WorldConfig | None = None) -> Image.Image:
    """A scene the model has never seen, drawn from the world's vocabulary (``config``: the course's world)."""
    config = config or WorldConfig()
    return render_scene(sample_scene(config, np.random.default_rng(seed), image_id=seed), config)


def ask_and_show(model, tokenizer, image_processor, image: Image.Image, question: str,
                 system_prompt: str | None = None, max_new_tokens: int = 48) -> AnswerAttention:
    """Print the model's greedy answer to ``question`` about ``image``, and show where the answer looked: the
    image as the model sees it beside each layer's attention of the answer tokens to its patches (heads and
    tokens averaged, renormalised over the image)."""
    with eager_attention(model):
        att = inspect_answer(model, tokenizer, image_processor, image, question, system_prompt=system_prompt,
                             max_new_tokens=max_new_tokens)
    print(f"Q: {question}\nA: {att.answer_text}")
    plot_answer_layers(att, image, image_processor, show=True)
    return att


def explorer(model, tokenizer, image_processor, records: Sequence[ImageRecord], question: str, index: int = 0,
             system_prompt: str | None = None, choices: int = 20):
    """``ask_and_show`` on ``records[index]`` and ``question``, then, where ipywidgets is installed, controls:
    one of the first ``choices`` records or a new scene (by seed), a question box and an Ask button.
    Returns the widget box, or None without ipywidgets."""
    def ask(image, text):
        return ask_and_show(model, tokenizer, image_processor, image, text, system_prompt)

    ask(records[index].load_image(), question)
    try:
        import ipywidgets as widgets
        from IPython.display import display
    except ImportError:  # a plain Python run: the answer above is all there is
        return None
    pick = widgets.Dropdown(options=[(f"held-out image {i}", i) for i in range(min(choices, len(records)))]
                            + [("a new scene (seed below)", -1)], value=index, description="image")
    seed = widgets.IntText(value=0, description="scene seed")
    text = widgets.Text(value=question, description="question", layout=widgets.Layout(width="60%"))
    button, out = widgets.Button(description="Ask"), widgets.Output()

    def on_click(_):
        with out:
            out.clear_output(wait=True)
            ask(new_scene(seed.value) if pick.value < 0 else records[pick.value].load_image(), text.value)

    button.on_click(on_click)
    box = widgets.VBox([widgets.HBox([pick, seed]), widgets.HBox([text, button]), out])
    display(box)
    return box
