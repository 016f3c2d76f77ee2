"""Images -> ``pixel_values``: pad to a square with the processor's mean colour (LLaVA v1.5 "pad"), then
the image processor; and reading an image file with an error that names the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from llava_mini.teacher import RecordError


def expand_to_square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad an image to a square (content centred) with ``background``."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    square = Image.new(image.mode, (side, side), background)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square


def mean_colour(image_processor) -> tuple[int, int, int]:
    """The processor's normalisation mean as an RGB colour (padding becomes ~0 after normalising), truncated
    with ``int`` like LLaVA and transformers' ``LlavaImageProcessor(do_pad=True)``: an export pads the same."""
    return tuple(int(m * 255) for m in image_processor.image_mean)


def image_to_pixel_values(image: Image.Image, image_processor) -> torch.Tensor:
    """PIL image -> ``pixel_values`` (3, H, W): pad to a square with the mean colour, then the processor."""
    image = expand_to_square(image.convert("RGB"), mean_colour(image_processor))
    return image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def load_image(path: str | Path, record_id: Any = "<unknown>") -> Image.Image:
    """Open an image as RGB; an unreadable or missing file raises ``RecordError`` naming the record."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises many kinds (OSError, UnidentifiedImageError, ...)
        raise RecordError(record_id, f"cannot read image {str(path)!r}: {error}") from error
