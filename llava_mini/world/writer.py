"""Write the shapes world as a COCO-format dataset, so every later step reads it as it would COCO 2017:

    <root>/images/<split>/<image_id:07d>.png     ids: train 1, 2, ...; val 1000001, ...; test 2000001, ...
    <root>/annotations/captions_<split>.json    images + five captions per image
    <root>/annotations/instances_<split>.json   images + boxes; one category per colour+shape ("red circle")
    <root>/world.json                           the stamp (version, seed, sizes, config) that vouches for it
"""

import zlib
from dataclasses import asdict
from pathlib import Path

from llava_mini.files import FileFormatError, fingerprint, read_json, write_json
from llava_mini.world.captions import make_captions
from llava_mini.world.shapes import SPLITS, WORLD_VERSION, Scene, WorldConfig, _rng, render_scene, sample_scene

IDS_PER_SPLIT = 1_000_000


def image_id_for(split: str, index: int) -> int:
    """COCO image id of image `index` of `split`: unique, and independent of the other splits' sizes."""
    if not 0 <= index < IDS_PER_SPLIT - 1:
        raise ValueError(f"image index {index} out of range for split {split!r}")
    block = SPLITS.index(split) if split in SPLITS else 3 + zlib.crc32(split.encode()) % 1000
    return block * IDS_PER_SPLIT + index + 1


def scene_with_captions(seed: int, split: str, index: int, config: WorldConfig | None = None,
                        n_captions: int = 5) -> tuple[Scene, list[str]]:
    """The scene and captions of image `index` of `split`: exactly what generate_world writes for it."""
    config, rng = config or WorldConfig(), _rng(seed, split, index)
    scene = sample_scene(config, rng, image_id_for(split, index))
    return scene, make_captions(scene, rng, n=n_captions, image_size=config.image_size)


def scene_for(seed: int, split: str, index: int, image_id: int | None = None, config: WorldConfig | None = None):
    """The scene generate_world draws for image `index` of `split` (for tests and demos)."""
    return sample_scene(config or WorldConfig(), _rng(seed, split, index), image_id or image_id_for(split, index))


def generate_world(root: str | Path, sizes: dict[str, int] | None = None, seed: int = 0,
                   config: WorldConfig | None = None, overwrite: bool = False) -> dict[str, dict[str, Path]]:
    """Write the world under `root`; return {split: {"captions", "instances", "images"}: path}. `sizes` maps
    split to image count (default train 4000, val 500, test 500). Image i of a split depends only on
    (seed, split, i). A complete world with the same stamp is reused unless `overwrite`."""
    config, sizes, root = config or WorldConfig(), sizes or {"train": 4000, "val": 500, "test": 500}, Path(root)
    stamp = {"version": WORLD_VERSION, "seed": seed, "sizes": sizes, "config": asdict(config)}
    stamp_file = root / "world.json"
    paths = {split: {"captions": root / "annotations" / f"captions_{split}.json",
                     "instances": root / "annotations" / f"instances_{split}.json",
                     "images": root / "images" / split} for split in sizes}
    try:  # the stamp on disk against this request (fingerprints read tuples and lists alike)
        same = not overwrite and fingerprint(read_json(stamp_file)) == fingerprint(stamp)
    except (FileFormatError, OSError):  # missing, unreadable or not JSON: draw again
        same = False
    files = [p[k] for p in paths.values() for k in ("captions", "instances")]
    files += [paths[s]["images"] / f"{image_id_for(s, n - 1):07d}.png" for s, n in sizes.items() if n > 0]
    if same and all(f.exists() for f in files):
        return paths
    stamp_file.unlink(missing_ok=True)  # a run cut short must not leave a stamp that vouches for it
    categories = config.categories()
    cat_id = {c["name"]: c["id"] for c in categories}
    for split, count in sizes.items():
        paths[split]["images"].mkdir(parents=True, exist_ok=True)
        images, captions, instances = [], [], []
        for index in range(count):
            scene, scene_captions = scene_with_captions(seed, split, index, config)
            image_id, file_name, side = scene.image_id, f"{scene.image_id:07d}.png", config.image_size
            render_scene(scene, config).save(paths[split]["images"] / file_name)
            images.append({"id": image_id, "file_name": file_name, "width": side, "height": side})
            for k, text in enumerate(scene_captions):
                # Annotation ids derive from the image id, so they too stay put when a split grows.
                captions.append({"id": image_id * 100 + k, "image_id": image_id, "caption": text})
            for k, obj in enumerate(scene.objects):
                x, y, w, h = obj.bbox
                # "attributes" extends COCO (readers ignore unknown keys): the evaluation's ground truth.
                instances.append({"id": image_id * 100 + k, "image_id": image_id, "category_id": cat_id[obj.category],
                                  "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                                  "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size}})
        info = {"description": "llava_mini shapes world", "seed": seed, "split": split}
        write_json(paths[split]["captions"], {"info": info, "images": images, "annotations": captions})
        write_json(paths[split]["instances"], {"info": info, "images": images, "annotations": instances,
                                               "categories": categories})
    write_json(stamp_file, stamp)
    return paths
