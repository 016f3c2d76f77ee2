"""The hand-annotated real photos: the files read cleanly and every annotation is plausible."""

from __future__ import annotations

import json

import pytest

from llava_mini.world import photos
from llava_mini.world import read_coco


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLAVA_MINI_WORK", str(tmp_path_factory.mktemp("work")))
        yield photos.read_photos()


def test_annotation_files_read_cleanly(dataset):
    assert len(dataset) == len(photos.SOURCES) == 6
    assert not dataset.skipped  # errors="raise" would have raised; nothing was dropped either
    assert {r.file_name for r in dataset} == set(photos.SOURCES)


def test_every_photo_has_five_captions_and_a_box_inside_it(dataset):
    for r in dataset:
        assert len(r.captions) == 5 and len(set(r.captions)) == 5, r.file_name
        assert all(len(c.split()) >= 5 and c.endswith(".") for c in r.captions), r.file_name
        assert r.objects, r.file_name
        for obj in r.objects:
            x, y, w, h = obj.bbox
            assert w > 0 and h > 0 and x >= 0 and y >= 0, (r.file_name, obj)
            assert x + w <= r.width and y + h <= r.height, (r.file_name, obj)


def test_sizes_in_the_annotations_match_the_exported_pixels(dataset):
    for r in dataset:
        assert r.path.exists()
        assert r.load_image().size == (r.width, r.height), r.file_name


def test_the_main_subject_is_boxed(dataset):
    # The object each picture is about, so the boxes cannot silently go missing.
    expected = {"astronaut.png": "person", "coffee.png": "cup", "chelsea.png": "cat", "rocket.png": "rocket",
                "motorcycle.png": "motorcycle", "grace_hopper.png": "person"}
    for r in dataset:
        assert expected[r.file_name] in [o.category for o in r.objects], r.file_name


def test_export_writes_the_files_the_annotations_name(tmp_path):
    folder = photos.export_photos(tmp_path / "out")
    names = {img["file_name"] for img in json.loads(photos.INSTANCES_FILE.read_text())["images"]}
    assert names == {p.name for p in folder.iterdir()}
    again = read_coco(photos.CAPTIONS_FILE, photos.INSTANCES_FILE, image_dir=folder)
    assert all(r.path.exists() for r in again)
