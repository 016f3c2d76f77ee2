"""The teacher's text view of an image, character for character, and the box drawing."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from llava_mini.world import ImageRecord, ObjectAnnotation, read_split  # noqa: E402
from llava_mini.world import box_line, context_text, draw_boxes, normalized_box  # noqa: E402
from llava_mini.world import generate_world  # noqa: E402


def record() -> ImageRecord:
    return ImageRecord(
        image_id=7, file_name="x.jpg", width=640, height=480,
        captions=["A man rides a bike past a shop.", "A cyclist on a city street."],
        objects=[
            ObjectAnnotation("person", (64, 48, 160, 240)),
            ObjectAnnotation("bicycle", (100.5, 200.25, 300, 279.75)),
            ObjectAnnotation("traffic light", (600, 0, 40, 90)),
        ],
    )


def test_context_with_boxes_is_exact():
    assert context_text(record()) == (
        "A man rides a bike past a shop.\n"
        "A cyclist on a city street.\n"
        "\n"
        "person: [0.100, 0.100, 0.350, 0.600]\n"
        "bicycle: [0.157, 0.417, 0.626, 1.000]\n"
        "traffic light: [0.938, 0.000, 1.000, 0.188]"
    )


def test_captions_only_context_is_exact():
    assert context_text(record(), boxes=False) == "A man rides a bike past a shop.\nA cyclist on a city street."


def test_no_objects_means_no_blank_line():
    r = record()
    r.objects = []
    assert context_text(r) == context_text(r, boxes=False)
    assert not context_text(r).endswith("\n")


def test_box_corners_are_normalised_by_width_and_height_and_clipped():
    r = record()
    assert normalized_box(r.objects[0], r.width, r.height) == pytest.approx((0.1, 0.1, 0.35, 0.6))
    poking_out = ObjectAnnotation("cup", (-0.6, 10, 101, 20))  # COCO float boxes may pass the edge a little
    assert normalized_box(poking_out, 100, 100) == pytest.approx((0.0, 0.1, 1.0, 0.3))
    assert box_line(poking_out, 100, 100) == "cup: [0.000, 0.100, 1.000, 0.300]"
    assert box_line(ObjectAnnotation("cat", (0, 0, 1, 2)), 3, 3) == "cat: [0.000, 0.000, 0.333, 0.667]"


BOX_LINE = re.compile(r"^([a-z ]+): \[(\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3}), (\d\.\d{3})\]$")


def test_world_contexts_follow_the_format(tmp_path):
    generate_world(tmp_path, {"val": 30}, seed=0)
    for r in read_split(tmp_path, "val"):
        lines = context_text(r).split("\n")
        assert lines[:5] == r.captions and lines[5] == ""
        box_lines = lines[6:]
        assert len(box_lines) == len(r.objects)
        for line, obj in zip(box_lines, r.objects):
            m = BOX_LINE.match(line)
            assert m, line
            x1, y1, x2, y2 = map(float, m.groups()[1:])
            assert m.group(1) == obj.category
            assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
            x, y, w, h = obj.bbox
            assert (x1, y1, x2, y2) == pytest.approx((x / 64, y / 64, (x + w) / 64, (y + h) / 64), abs=5.0001e-4)
        assert context_text(r, boxes=False) == "\n".join(r.captions)


def test_draw_boxes_draws_one_labelled_box_per_object():
    r = record()
    fig, ax = plt.subplots()
    image = np.zeros((r.height, r.width, 3), dtype=np.uint8)
    draw_boxes(r, image=image, ax=ax, title="demo")
    assert len(ax.patches) == len(r.objects)
    assert [t.get_text() for t in ax.texts] == [o.category for o in r.objects]
    # A box's outline lies on the pixel edges: [x, y, w, h] covers pixels x .. x + w - 1.
    assert ax.patches[0].get_xy() == (63.5, 47.5)
    assert (ax.patches[0].get_width(), ax.patches[0].get_height()) == (160, 240)
    assert ax.get_title() == "demo"
    plt.close(fig)
