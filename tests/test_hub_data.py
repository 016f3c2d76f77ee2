"""Real data through `datasets`: COCO 2017 files as the reader meets them, the released LLaVA JSON loaded into
Arrow with every bad record counted, and llava_mini's records shared with their pictures and loaded back."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from llava_mini.teacher import RecordError, load_records, make_record, validate_training_record
from llava_mini.teacher.hub import IMAGE_FEATURES, image_dataset, load_instruct, unpack_image_dataset
from llava_mini.world import context_text, read_split

# ----------------------------------------------------------------------------- COCO 2017 as unzipped

NAMES = ["000000000139.jpg", "000000000285.jpg", "000000000632.jpg", "000000000724.jpg"]


def coco_root(tmp_path: Path) -> Path:
    """<root>/annotations/{captions,instances}_val2017.json and <root>/val2017/*.jpg, with COCO's extra keys."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images = [{"id": int(n[:-4]), "file_name": n, "width": 64, "height": 48, "license": 1,
               "coco_url": f"http://images.cocodataset.org/val2017/{n}", "date_captured": "2013-11-21"} for n in NAMES]
    for n in NAMES:
        Image.new("RGB", (64, 48), (30, 90, 150)).save(root / "val2017" / n)
    captions = [{"id": 10 + i, "image_id": img["id"], "caption": f"A street scene number {i}."}
                for i, img in enumerate(images) for _ in range(5 if i else 6)]
    instances = [  # ids need not be contiguous; names hold spaces; a crowd region; image 724 has no object
        {"id": 1, "image_id": 139, "category_id": 10, "bbox": [8.0, 4.0, 16.0, 24.0], "iscrowd": 0, "area": 384.0,
         "segmentation": [[8, 4, 24, 4, 24, 28]]},
        {"id": 2, "image_id": 139, "category_id": 1, "bbox": [0.0, 0.0, 64.4, 48.3], "iscrowd": 1, "area": 3000.0,
         "segmentation": {"counts": [0, 10], "size": [48, 64]}},
        {"id": 3, "image_id": 285, "category_id": 23, "bbox": [10, 10, 20, 20], "iscrowd": 0},
        {"id": 4, "image_id": 632, "category_id": 10, "bbox": [1, 2, 3, 4], "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"},
                  {"id": 10, "name": "traffic light", "supercategory": "outdoor"},
                  {"id": 23, "name": "bear", "supercategory": "animal"}]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": instances, "categories": categories}))
    return root


def test_coco_2017_layout_is_read_by_either_split_name(tmp_path):
    root = coco_root(tmp_path)
    for split in ("val2017", "val"):
        dataset = read_split(root, split)
        assert [r.file_name for r in dataset] == NAMES and not dataset.skipped
        assert dataset[0].path == root / "val2017" / NAMES[0] and dataset[0].load_image().size == (64, 48)
    by_id = read_split(root, "val2017").by_id()
    assert [(o.category, o.iscrowd) for o in by_id[139].objects] == [("traffic light", False), ("person", True)]
    assert by_id[724].objects == [] and len(by_id[724].captions) == 5 and len(by_id[139].captions) == 6
    assert context_text(by_id[285], boxes=True).endswith("\n\nbear: [0.156, 0.208, 0.469, 0.625]")
    assert "traffic light: [0.125, 0.083, 0.375, 0.583]" in context_text(by_id[139], boxes=True)


def test_subset_first_n_or_a_seeded_sample_and_disjoint_parts(tmp_path):
    dataset = read_split(coco_root(tmp_path), "val2017")
    assert [r.image_id for r in dataset.subset(2)] == [139, 285]
    train, held_out = dataset.subset(3, seed=5), dataset.subset(3, seed=5, start=3)
    assert [r.image_id for r in train] == [r.image_id for r in dataset.subset(3, seed=5)]  # seeded: the same again
    assert len(train) == 3 and len(held_out) == 1 and not {r.image_id for r in train} & {r.image_id for r in held_out}
    assert [r.image_id for r in train] == sorted(r.image_id for r in train)
    samples = {tuple(r.image_id for r in dataset.subset(2, seed=s)) for s in range(20)}
    assert len(samples) > 1  # the seed matters


# ----------------------------------------------------------------------------- the released JSON, checked

def turns(*values):
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


GOOD = [
    {"id": "000000000139", "image": NAMES[0], "conversations": turns("<image>\nWhat is lit?", "A traffic light.")},
    {"id": "000000000285", "image": NAMES[1], "conversations": turns("What animal?\n<image>", "A bear.", "Big?", "Yes.")},
    {"id": 632, "image": NAMES[2], "model": "", "conversations": turns("<image>\nDescribe.", "Lights.")},  # int id
]
BAD = [  # (record, the reason it is counted under)
    ({"id": "a", "image": NAMES[0], "conversations": turns("What is lit?", "A light.")}, "<image> not exactly once"),
    ({"id": "b", "image": NAMES[0], "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                      {"from": "human", "value": "Q again?"}]}, "turns do not alternate"),
    ({"id": "c", "image": "000000999999.jpg", "conversations": turns("<image>\nQ?", "A.")}, "image not found"),
    ({"id": "d", "image": NAMES[0], "conversations": turns("<image>\nQ?", 5)}, "turn is not a string"),
    ({"id": "e", "image": NAMES[0], "conversations": "<image> Q? A."}, "no turns"),
    ({"id": "f", "image": 7, "conversations": turns("<image>\nQ?", "A.")}, "bad image name"),
    ({"id": "g", "conversations": turns("<image>\nQ?", "A.")}, "no image"),
    ({"id": "h", "conversations": turns("Hello?", "Hi.")}, "<image> not exactly once"),  # text-only (LLaVA v1.5 mix)
    (["not", "a", "record"], "not a JSON object"),
]


def rows(records):
    return [{"id": str(r["id"]), "image": r["image"], "conversations": r["conversations"]} for r in records]


def instruct_file(tmp_path: Path, records, name="llava_instruct_150k.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records))
    return path


def test_released_json_loads_memory_mapped_with_every_skip_counted(tmp_path):
    root = coco_root(tmp_path)
    mixed = [GOOD[0]] + [b for b, _ in BAD[:4]] + GOOD[1:] + [b for b, _ in BAD[4:]]
    loaded = load_instruct(instruct_file(tmp_path, mixed), root / "val2017", cache_dir=tmp_path / "cache")
    assert isinstance(loaded.dataset, datasets.Dataset) and loaded.dataset.features["conversations"]
    assert list(loaded.dataset) == rows(GOOD)  # in file order, the extra "model" key dropped, the id a string
    assert loaded.skipped == Counter(reason for _, reason in BAD)
    assert loaded.skipped_examples[0].startswith(f"{tmp_path / 'llava_instruct_150k.json'}: record 1 (id 'a'): ")
    (arrow,) = loaded.dataset.cache_files  # on disk and memory-mapped, not held in memory
    assert Path(arrow["filename"]).is_relative_to(tmp_path / "cache")


def test_without_an_image_folder_pictures_are_not_looked_for(tmp_path):
    bad_image = BAD[2][0]
    loaded = load_instruct(instruct_file(tmp_path, GOOD + [bad_image]), cache_dir=tmp_path / "cache")
    assert len(loaded.dataset) == 4 and not loaded.skipped


def test_the_parts_of_the_mix_and_stage1_captions_load_as_one(tmp_path):
    root = coco_root(tmp_path)
    parts = [instruct_file(tmp_path, [r], f"part{i}.json") for i, r in enumerate(GOOD)]
    stage1 = [{"id": "000000000724", "image": NAMES[3], "conversations": turns("<image>\nBriefly describe.", "A street.")}]
    loaded = load_instruct(parts + [instruct_file(tmp_path, stage1, "blip_laion_cc_sbu_558k.json")], root / "val2017",
                           cache_dir=tmp_path / "cache")
    assert list(loaded.dataset) == rows(GOOD + stage1) and not loaded.skipped


def test_the_arrow_cache_follows_the_files_and_the_pictures(tmp_path):
    root = coco_root(tmp_path)
    path = instruct_file(tmp_path, GOOD + [BAD[2][0]])
    first = load_instruct(path, root / "val2017", cache_dir=tmp_path / "cache")
    again = load_instruct(path, root / "val2017", cache_dir=tmp_path / "cache")
    assert list(again.dataset) == list(first.dataset) and again.skipped == first.skipped == {"image not found": 1}
    Image.new("RGB", (8, 8)).save(root / "val2017" / "000000999999.jpg")  # the missing picture arrives
    assert len(load_instruct(path, root / "val2017", cache_dir=tmp_path / "cache").dataset) == 4
    instruct_file(tmp_path, GOOD[:1])  # the file changes under the same name
    assert list(load_instruct(path, root / "val2017", cache_dir=tmp_path / "cache").dataset) == rows(GOOD[:1])


def test_streaming_checks_as_it_reads_and_counts_each_pass_afresh(tmp_path):
    root = coco_root(tmp_path)
    loaded = load_instruct(instruct_file(tmp_path, GOOD + [b for b, _ in BAD]), root / "val2017", streaming=True)
    assert isinstance(loaded.dataset, datasets.IterableDataset)
    assert not loaded.skipped  # nothing read yet
    assert list(loaded.dataset) == rows(GOOD)
    assert loaded.skipped == Counter(reason for _, reason in BAD)
    assert list(loaded.dataset.take(1)) == rows(GOOD[:1])
    list(loaded.dataset)
    assert loaded.skipped == Counter(reason for _, reason in BAD)  # not doubled by a second pass


def test_a_file_that_is_not_a_list_of_records_names_itself(tmp_path):
    path = instruct_file(tmp_path, {"id": "x"})
    with pytest.raises(ValueError, match=rf"^{path}: expected a JSON list of records, got dict"):
        load_instruct(path, cache_dir=tmp_path / "cache")


def test_the_rule_each_record_breaks_survives_load_records(tmp_path):
    path = instruct_file(tmp_path, GOOD[:1] + [BAD[1][0]])
    with pytest.raises(RecordError) as e:
        load_records(path)
    assert (e.value.reason, e.value.index) == ("turns do not alternate", 1)
    for image, reason in (("../secret.png", "bad image name"), ("/etc/x.png", "bad image name"), (None, "no image")):
        record = dict(GOOD[0], image=image) if image else {k: v for k, v in GOOD[0].items() if k != "image"}
        with pytest.raises(RecordError) as e:
            validate_training_record(record)
        assert e.value.reason == reason


# ----------------------------------------------------------------------------- llava_mini's records, shared

def own_data(tmp_path: Path) -> tuple[list[dict], Path]:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    rng, records = random.Random(0), []
    for k, name in enumerate(["1000001.png", "1000002.png", "sub/1000003.png"]):
        pixels = np.random.default_rng(k).integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / name)
        records.append(make_record(f"{Path(name).stem}_conversation", name, [("What is there?", f"Shape {k}.")], rng))
    return records, folder


def test_own_records_round_trip_with_their_pictures(tmp_path):
    records, folder = own_data(tmp_path)
    (tmp_path / "own.json").write_text(json.dumps(records))
    shared = image_dataset(tmp_path / "own.json", folder, cache_dir=tmp_path / "cache")
    assert shared.features == IMAGE_FEATURES
    shared.save_to_disk(tmp_path / "saved")
    shared.to_parquet(tmp_path / "own.parquet")
    for back in (datasets.load_from_disk(tmp_path / "saved"),
                 datasets.Dataset.from_parquet(str(tmp_path / "own.parquet"), cache_dir=str(tmp_path / "cache"))):
        assert [{k: row[k] for k in ("id", "image", "conversations")} for row in back] == records
        for row in back:  # the picture itself travelled, not a path to it
            assert np.array_equal(np.asarray(row["picture"]), np.asarray(Image.open(folder / row["image"])))
        unpacked = tmp_path / "unpacked"
        assert unpack_image_dataset(back, unpacked) == records
        assert all((unpacked / r["image"]).read_bytes() == (folder / r["image"]).read_bytes() for r in records)
    assert list(load_instruct(tmp_path / "own.json", unpacked, cache_dir=tmp_path / "cache").dataset) == records


def test_sharing_needs_every_picture(tmp_path):
    records, folder = own_data(tmp_path)
    (folder / records[1]["image"]).unlink()
    with pytest.raises(RecordError, match=r"record 1 \(id '1000002_conversation'\): image '1000002.png' is not in"):
        image_dataset(records, folder, cache_dir=tmp_path / "cache")


def test_unpacking_never_writes_outside_the_folder(tmp_path):
    records, folder = own_data(tmp_path)
    shared = image_dataset(records[:1], folder, cache_dir=tmp_path / "cache")
    hostile = shared.map(lambda row: {"image": "../escaped.png"}, cache_file_name=str(tmp_path / "hostile.arrow"))
    with pytest.raises(RecordError, match="not a path inside the image folder"):
        unpack_image_dataset(hostile, tmp_path / "out")
    assert not (tmp_path / "escaped.png").exists()
