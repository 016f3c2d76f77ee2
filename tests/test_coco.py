"""Reading COCO-format files: the round trip from the world, and every kind of bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from llava_mini.world import CocoFormatError, read_coco, read_split
from llava_mini.world import generate_world, scene_with_captions

# ----------------------------------------------------------------------------- round trip


def test_world_round_trip_gives_back_every_box_and_caption(tmp_path):
    sizes = {"train": 25, "val": 8}
    generate_world(tmp_path, sizes, seed=3)
    for split, n in sizes.items():
        dataset = read_split(tmp_path, split)
        assert len(dataset) == n and not dataset.skipped
        for index, record in enumerate(dataset):
            scene, captions = scene_with_captions(3, split, index)
            assert record.image_id == scene.image_id
            assert record.captions == captions
            assert len(record.objects) == len(scene.objects)
            for got, want in zip(record.objects, scene.objects):
                assert got.category == want.category
                assert all(abs(g - w) <= 0.5 for g, w in zip(got.bbox, want.bbox))
                assert got.attributes == {"shape": want.shape, "color": want.color, "size": want.size}
                assert not got.iscrowd
            assert record.path.exists()
            assert record.load_image().size == (record.width, record.height)


# ----------------------------------------------------------------------------- hand-written files

IMAGES = [
    {"id": 1, "file_name": "a.jpg", "width": 200, "height": 100},
    {"id": 2, "file_name": "b.jpg", "width": 50, "height": 80},
    {"id": 3, "file_name": "c.jpg", "width": 60, "height": 60},
]
CAPTIONS = {
    "images": IMAGES,
    "annotations": [
        {"id": 10, "image_id": 1, "caption": "A man holds a cup."},
        {"id": 11, "image_id": 1, "caption": "  Someone drinking\ncoffee.  "},
        {"id": 12, "image_id": 2, "caption": "A cat."},
        # image 3 has no caption
    ],
}
INSTANCES = {
    "images": IMAGES,
    "categories": [{"id": 1, "name": "person"}, {"id": 47, "name": "cup"}, {"id": 90, "name": "toothbrush"}],
    "annotations": [
        {"id": 100, "image_id": 1, "category_id": 1, "bbox": [10, 5, 100, 90], "iscrowd": 0},
        {"id": 101, "image_id": 1, "category_id": 47, "bbox": [120.4, 40.2, 20.5, 30.1], "iscrowd": 0},
        {"id": 102, "image_id": 3, "category_id": 90, "bbox": [0, 0, 60, 60], "iscrowd": 1},
        # image 2 has no object
    ],
}


def write(tmp_path: Path, captions=CAPTIONS, instances=INSTANCES) -> tuple[Path, Path]:
    cap, ins = tmp_path / "captions_x.json", tmp_path / "instances_x.json"
    cap.write_text(json.dumps(captions))
    ins.write_text(json.dumps(instances))
    return cap, ins


def test_reads_hand_written_files(tmp_path):
    dataset = read_coco(*write(tmp_path), image_dir=tmp_path)
    by_id = dataset.by_id()
    assert [r.image_id for r in dataset] == [1, 2, 3]
    one = by_id[1]
    assert (one.width, one.height, one.path) == (200, 100, tmp_path / "a.jpg")
    assert one.captions == ["A man holds a cup.", "Someone drinking coffee."]  # whitespace folded
    assert [o.category for o in one.objects] == ["person", "cup"]
    assert one.objects[1].bbox == (120.4, 40.2, 20.5, 30.1)
    assert one.objects[1].corners == pytest.approx((120.4, 40.2, 140.9, 70.3))


def test_non_contiguous_category_ids_map_to_their_names(tmp_path):
    dataset = read_coco(*write(tmp_path))
    assert dataset.by_id()[3].objects[0].category == "toothbrush"  # id 90
    assert dataset.by_id()[1].objects[1].category == "cup"  # id 47


def test_iscrowd_is_kept(tmp_path):
    by_id = read_coco(*write(tmp_path)).by_id()
    assert by_id[3].objects[0].iscrowd is True
    assert by_id[1].objects[0].iscrowd is False
    flags = _mutated("instances", lambda d: [d["annotations"][0].update(iscrowd=True), d["annotations"][1].pop("iscrowd")])
    by_id = read_coco(*write(tmp_path, *flags)).by_id()
    assert [o.iscrowd for o in by_id[1].objects] == [True, False]  # a bool is fine; a missing flag means 0


def test_images_without_captions_or_objects_are_kept(tmp_path):
    by_id = read_coco(*write(tmp_path)).by_id()
    assert by_id[2].objects == [] and by_id[2].captions == ["A cat."]
    assert by_id[3].captions == [] and len(by_id[3].objects) == 1


def test_either_file_alone(tmp_path):
    cap, ins = write(tmp_path)
    assert all(r.objects == [] for r in read_coco(cap, None))
    assert all(r.captions == [] for r in read_coco(None, ins))
    with pytest.raises(ValueError):
        read_coco(None, None)


def test_images_are_the_union_of_both_files(tmp_path):
    captions = copy.deepcopy(CAPTIONS)
    captions["images"] = IMAGES[:2]
    dataset = read_coco(*write(tmp_path, captions=captions))
    assert [r.image_id for r in dataset] == [1, 2, 3]


def test_coco_layout_is_found(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    (tmp_path / "annotations" / "captions_val.json").write_text(json.dumps(CAPTIONS))
    (tmp_path / "annotations" / "instances_val.json").write_text(json.dumps(INSTANCES))
    dataset = read_split(tmp_path, "val")
    assert dataset[0].path == tmp_path / "val2017" / "a.jpg"


def test_unreadable_image_names_the_image(tmp_path):
    dataset = read_coco(*write(tmp_path), image_dir=tmp_path)
    (tmp_path / "a.jpg").write_text("not a jpeg")
    with pytest.raises(CocoFormatError, match=r"image 1 .*a\.jpg"):
        dataset[0].load_image()
    with pytest.raises(ValueError, match="no image folder"):
        read_coco(*write(tmp_path))[0].path


# ----------------------------------------------------------------------------- bad input

def _mutated(kind: str, change) -> tuple[dict, dict]:
    captions, instances = copy.deepcopy(CAPTIONS), copy.deepcopy(INSTANCES)
    change(captions if kind == "captions" else instances)
    return captions, instances


# (name, which file, how to break it, what the message must say, the skip reason or None if it always raises)
BAD_RECORDS = [
    ("negative width", "instances", lambda d: d["annotations"][1].update(bbox=[120, 40, -5, 30]),
     r"annotations\[1\] \(id 101\), image id 1: box with non-positive size", "box with non-positive size"),
    ("zero height", "instances", lambda d: d["annotations"][0].update(bbox=[10, 5, 10, 0]),
     r"annotations\[0\] \(id 100\), image id 1: box with non-positive size", "box with non-positive size"),
    ("box outside", "instances", lambda d: d["annotations"][0].update(bbox=[150, 5, 100, 50]),
     r"annotations\[0\] \(id 100\), image id 1: box outside the image: .* 200x100", "box outside the image"),
    ("negative corner", "instances", lambda d: d["annotations"][0].update(bbox=[-8, 5, 10, 10]),
     r"annotations\[0\] \(id 100\).*box outside the image", "box outside the image"),
    ("not a number", "instances", lambda d: d["annotations"][0].update(bbox=[float("nan"), 5, 10, 10]),
     r"annotations\[0\] \(id 100\).*malformed box", "malformed box"),
    ("three numbers", "instances", lambda d: d["annotations"][0].update(bbox=[1, 5, 10]),
     r"annotations\[0\] \(id 100\).*malformed box", "malformed box"),
    ("caption for unknown image", "captions", lambda d: d["annotations"][2].update(image_id=77),
     r"annotations\[2\] \(id 12\): caption for unknown image id 77", "caption for unknown image"),
    ("box for unknown image", "instances", lambda d: d["annotations"][2].update(image_id=77),
     r"annotations\[2\] \(id 102\): box for unknown image id 77", "box for unknown image"),
    ("unknown category", "instances", lambda d: d["annotations"][1].update(category_id=5),
     r"annotations\[1\] \(id 101\), image id 1: unknown category id 5", "unknown category"),
    ("empty caption", "captions", lambda d: d["annotations"][0].update(caption="  "),
     r"annotations\[0\] \(id 10\): empty caption", "empty caption"),
    ("caption not a string", "captions", lambda d: d["annotations"][0].update(caption=5),
     r"annotations\[0\] \(id 10\): caption is not a string \(got int\)", "caption is not a string"),
    ("iscrowd a string", "instances", lambda d: d["annotations"][2].update(iscrowd="0"),
     r"annotations\[2\] \(id 102\), image id 3: iscrowd must be 0 or 1, got '0'", "bad iscrowd"),
    ("iscrowd two", "instances", lambda d: d["annotations"][0].update(iscrowd=2),
     r"annotations\[0\] \(id 100\), image id 1: iscrowd must be 0 or 1, got 2", "bad iscrowd"),
]


@pytest.mark.parametrize("name,kind,change,message,reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_raises_naming_file_and_record(tmp_path, name, kind, change, message, reason):
    cap, ins = write(tmp_path, *_mutated(kind, change))
    bad_file = cap if kind == "captions" else ins
    with pytest.raises(CocoFormatError, match=message) as info:
        read_coco(cap, ins)
    assert str(info.value).startswith(str(bad_file))


@pytest.mark.parametrize("name,kind,change,message,reason", BAD_RECORDS, ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_is_counted_when_skipping(tmp_path, name, kind, change, message, reason):
    dataset = read_coco(*write(tmp_path, *_mutated(kind, change)), errors="skip")
    assert dict(dataset.skipped) == {reason: 1}
    assert len(dataset.skipped_examples) == 1 and str(tmp_path) in dataset.skipped_examples[0]
    n_good = len(CAPTIONS["annotations"]) + len(INSTANCES["annotations"])
    assert sum(len(r.captions) + len(r.objects) for r in dataset) == n_good - 1  # only the bad one left out


def test_several_bad_records_are_counted_by_reason(tmp_path):
    def change(d):
        d["annotations"][0].update(bbox=[10, 5, -1, 4])
        d["annotations"][1].update(category_id=5)
        d["annotations"][2].update(bbox=[0, 0, 60.8, 60.9])  # within a pixel of the 60x60 image: kept
    dataset = read_coco(*write(tmp_path, *_mutated("instances", change)), errors="skip")
    assert dict(dataset.skipped) == {"box with non-positive size": 1, "unknown category": 1}
    assert len(dataset.by_id()[3].objects) == 1


def test_box_a_little_past_the_edge_is_tolerated(tmp_path):
    # COCO's float boxes sometimes end a fraction of a pixel past the border.
    cap, ins = write(tmp_path, *_mutated("instances", lambda d: d["annotations"][0].update(bbox=[100, 0, 100.6, 100.4])))
    assert read_coco(cap, ins).by_id()[1].objects[0].bbox == (100, 0, 100.6, 100.4)


def test_missing_file_names_the_file(tmp_path):
    cap, _ = write(tmp_path)
    missing = tmp_path / "instances_missing.json"
    for errors in ("raise", "skip"):
        with pytest.raises(CocoFormatError, match=rf"{missing}: file not found"):
            read_coco(cap, missing, errors=errors)


def test_invalid_json_names_the_file(tmp_path):
    cap, ins = write(tmp_path)
    ins.write_text('{"images": [')
    with pytest.raises(CocoFormatError, match=rf"{ins}: not valid JSON"):
        read_coco(cap, ins)
    ins.write_text("[1, 2]")
    with pytest.raises(CocoFormatError, match=rf"{ins}: not an object \(got list\)"):
        read_coco(cap, ins)


MISSING_KEYS = [
    ("captions", lambda d: d.pop("annotations"), r"captions_x\.json: missing key 'annotations'"),
    ("instances", lambda d: d.pop("categories"), r"instances_x\.json: missing key 'categories'"),
    ("instances", lambda d: d.pop("images"), r"instances_x\.json: missing key 'images'"),
    ("captions", lambda d: d["images"][1].pop("width"), r"captions_x\.json: image id 2: missing key 'width'"),
    ("captions", lambda d: d["images"][0].pop("id"), r"captions_x\.json: images\[0\]: missing key 'id'"),
    ("captions", lambda d: d["annotations"][1].pop("caption"),
     r"captions_x\.json: annotations\[1\] \(id 11\): missing key 'caption'"),
    ("instances", lambda d: d["annotations"][2].pop("bbox"),
     r"instances_x\.json: annotations\[2\] \(id 102\): missing key 'bbox'"),
    ("instances", lambda d: d["annotations"][0].pop("category_id"),
     r"instances_x\.json: annotations\[0\] \(id 100\): missing key 'category_id'"),
    ("instances", lambda d: d["categories"][1].pop("name"), r"instances_x\.json: categories\[1\]: missing key 'name'"),
]


@pytest.mark.parametrize("kind,change,message", MISSING_KEYS)
def test_missing_key_names_file_and_record_even_when_skipping(tmp_path, kind, change, message):
    cap, ins = write(tmp_path, *_mutated(kind, change))
    for errors in ("raise", "skip"):
        with pytest.raises(CocoFormatError, match=message):
            read_coco(cap, ins, errors=errors)


def test_file_that_is_not_utf8_names_the_file(tmp_path):
    cap, ins = write(tmp_path)
    cap.write_bytes(b'{"images": [], "annotations": [{"caption": "caf\xe9"}]}')  # Latin-1, not UTF-8
    with pytest.raises(CocoFormatError, match=rf"{cap}: not UTF-8"):
        read_coco(cap, ins)


def test_conflicting_images_name_both_files(tmp_path):
    cap, ins = write(tmp_path, *_mutated("instances", lambda d: d["images"][2].update(file_name="other.jpg")))
    with pytest.raises(CocoFormatError, match=rf"{ins}: image id 3: differs from the same image in {cap}"):
        read_coco(cap, ins, errors="skip")


def test_duplicate_image_id_within_one_file_is_named_as_such(tmp_path):
    dup = {"id": 1, "file_name": "z.jpg", "width": 10, "height": 10}
    cap, ins = write(tmp_path, *_mutated("captions", lambda d: d["images"].append(dup)))
    with pytest.raises(CocoFormatError, match=rf"^{cap}: image id 1: appears twice in this file \(images\[0\] and \[3\]\)$"):
        read_coco(cap, ins)
    dataset = read_coco(cap, None, errors="skip")
    assert dict(dataset.skipped) == {"duplicate image id": 1}
    assert dataset.by_id()[1].file_name == "a.jpg"  # the first one is kept


# (name, how to break image 3 (one box, no caption) in both files, the message, the skip reasons)
BAD_IMAGES = [
    ("zero width", lambda img: img.update(width=0), r"image id 3: width and height must be positive numbers, got 0x60",
     {"bad image size": 1, "annotation of a skipped image": 1}),
    ("negative height", lambda img: img.update(height=-60), r"image id 3: .* got 60x-60",
     {"bad image size": 1, "annotation of a skipped image": 1}),
    ("size a string", lambda img: img.update(width="60"), r"image id 3: .* got '60'x60",
     {"bad image size": 1, "annotation of a skipped image": 1}),
    ("file name a number", lambda img: img.update(file_name=3), r"image id 3: file_name is not a string \(got int\)",
     {"file_name is not a string": 1, "annotation of a skipped image": 1}),
    # With no usable id the image cannot be named, so its box reads as one for an unknown image.
    ("id a string", lambda img: img.update(id="3"), r"images\[2\]: id is not an integer \(got str\)",
     {"image id is not an integer": 1, "box for unknown image": 1}),
]


@pytest.mark.parametrize("name,change,message,reasons", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES])
def test_bad_image_raises_or_is_skipped_with_its_annotations(tmp_path, name, change, message, reasons):
    captions, instances = copy.deepcopy(CAPTIONS), copy.deepcopy(INSTANCES)
    change(captions["images"][2])
    change(instances["images"][2])
    cap, ins = write(tmp_path, captions, instances)
    with pytest.raises(CocoFormatError, match=rf"^{cap}: {message}"):
        read_coco(cap, ins)
    dataset = read_coco(cap, ins, errors="skip")
    assert [r.image_id for r in dataset] == [1, 2]  # the other images are all there, with everything
    assert sum(len(r.captions) + len(r.objects) for r in dataset) == 5
    assert dict(dataset.skipped) == reasons  # the image counted once, though both files list it


def test_bad_image_in_one_file_only_is_skipped_too(tmp_path):
    cap, ins = write(tmp_path, *_mutated("instances", lambda d: d["images"][2].update(width=0)))
    dataset = read_coco(cap, ins, errors="skip")
    assert [r.image_id for r in dataset] == [1, 2]
    assert dict(dataset.skipped) == {"bad image size": 1, "annotation of a skipped image": 1}
    assert any(e.startswith(f"{ins}: image id 3: width") for e in dataset.skipped_examples)
    for captions_file in (cap, None):
        with pytest.raises(CocoFormatError, match=rf"^{ins}: image id 3: width and height"):
            read_coco(captions_file, ins)


def test_sections_that_are_not_lists_are_named(tmp_path):
    cap, ins = write(tmp_path, *_mutated("instances", lambda d: d.update(annotations={"id": 1})))
    with pytest.raises(CocoFormatError, match=rf"^{ins}: 'annotations' is not a list \(got dict\)$"):
        read_coco(cap, ins, errors="skip")
    cap, ins = write(tmp_path, *_mutated("captions", lambda d: d["annotations"].append(7)))
    with pytest.raises(CocoFormatError, match=rf"^{cap}: annotations\[3\]: not an object \(got int\)$"):
        read_coco(cap, ins, errors="skip")


def test_errors_argument_is_checked(tmp_path):
    with pytest.raises(ValueError, match="errors"):
        read_coco(*write(tmp_path), errors="ignore")
