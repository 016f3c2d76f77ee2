"""Counting what a COCO-style dataset holds (notebook 01's figures draw them: `plots.plot_world_statistics`)."""

from collections import Counter
from typing import Iterable

from llava_mini.world.coco import CocoDataset, ImageRecord


def world_statistics(dataset: CocoDataset | Iterable[ImageRecord]) -> dict[str, Counter]:
    """Counters of categories, colours, shapes, sizes, objects per image and caption lengths (words). Colour,
    shape and size come from the shapes world's `attributes`, which real photos do not have."""
    records = list(dataset)
    objects = [o for r in records for o in r.objects]
    return {"category": Counter(o.category for o in objects),
            **{key: Counter(o.attributes[key] for o in objects if o.attributes and key in o.attributes)
               for key in ("color", "shape", "size")},
            "objects per image": Counter(len(r.objects) for r in records),
            "caption words": Counter(len(c.split()) for r in records for c in r.captions)}
