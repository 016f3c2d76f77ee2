"""What to download for real data, and whether it is already on disk. It prints; it never downloads.

    python -m llava_mini.world.prepare --preset colab             # COCO 2017 annotations + val images
    python -m llava_mini.world.prepare --preset paper --sha256    # also hash what is there (slow for 19 GB)
    python -m llava_mini.world.prepare --preset colab --images 2000 --seed 0   # are a subset's pictures there?

Files go under the work folder (LLAVA_MINI_WORK, or --root), where the presets look for them. Each file is
"ok" (size, and with --sha256 the checksum, match the manifest), "unpacked" (the archive is gone but what it
unpacks to is there), "missing", or a size / checksum mismatch. Sizes and checksums are recorded only where
known: the COCO ones are those tensorflow_datasets checks its downloads against (url_checksums/coco2017.txt);
the hub files have none here, so --sha256 prints what is on disk, to compare with the file's page on the hub.
The command exits with 1 while anything is missing or wrong.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from llava_mini.paths import work_dir
from llava_mini.world.coco import read_coco

COCO = "http://images.cocodataset.org/"
HUB = "https://huggingface.co/datasets/liuhaotian/"


@dataclass(frozen=True)
class Download:
    url: str
    folder: str                   # where it goes, relative to the root
    size: int | None = None       # bytes, where known for certain
    sha256: str | None = None     # likewise
    unpacks_to: tuple[str, ...] = ()  # archives: what unzipping it in `folder` gives (relative to `folder`)
    images: int | None = None     # archives of pictures: how many .jpg the first of `unpacks_to` then holds

    @property
    def name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


_ANNOTATIONS = tuple(f"annotations/{kind}_{split}2017.json" for split in ("train", "val") for kind in ("captions", "instances"))
DOWNLOADS = {  # one small table: the whole manifest
    "coco-annotations": [Download(COCO + "annotations/annotations_trainval2017.zip", "coco", 252907541,
                                  "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268", _ANNOTATIONS)],
    "coco-val2017": [Download(COCO + "zips/val2017.zip", "coco", 815585330,
                              "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05", ("val2017",), 5000)],
    "coco-train2017": [Download(COCO + "zips/train2017.zip", "coco", 19336861798,
                                "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929", ("train2017",), 118287)],
    "llava-instruct": [Download(HUB + "LLaVA-Instruct-150K/resolve/main/llava_instruct_150k.json", "llava")],
    "llava-instruct-parts": [Download(HUB + f"LLaVA-Instruct-150K/resolve/main/{name}", "llava")
                             for name in ("conversation_58k.json", "detail_23k.json", "complex_reasoning_77k.json")],
    "llava-pretrain": [Download(HUB + "LLaVA-Pretrain/resolve/main/blip_laion_cc_sbu_558k.json", "llava"),
                       Download(HUB + "LLaVA-Pretrain/resolve/main/images.zip", "llava/pretrain_images")],
}
PRESET_DOWNLOADS = {  # colab: a 2-5K image subset fits in val2017's 5,000 pictures (0.8 GB, not train2017's 19 GB)
    "colab": ["coco-annotations", "coco-val2017"],
    "paper": ["coco-annotations", "coco-train2017", "coco-val2017", "llava-instruct", "llava-pretrain"],
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def check_download(download: Download, root: Path, checksum: bool = False) -> tuple[bool, str]:
    """(fine, what was found) for one download under `root`."""
    path, folder = root / download.folder / download.name, root / download.folder
    if path.is_file():
        size = path.stat().st_size
        if download.size is not None and size != download.size:
            return False, f"size mismatch: {size:,} bytes on disk, {download.size:,} expected (incomplete download?)"
        if not checksum:
            return True, "ok (size matches)" if download.size else f"present, {size:,} bytes (no size recorded)"
        digest = sha256_of(path)
        if download.sha256 is None:
            return True, f"present; checksum not recorded; sha256 on disk {digest}"
        if digest != download.sha256:
            return False, f"checksum mismatch: sha256 on disk {digest}"
        return True, "ok (size and sha256 match)"
    if download.unpacks_to and all((folder / p).exists() for p in download.unpacks_to):
        if download.images is None:
            return True, "unpacked"
        found = sum(1 for _ in (folder / download.unpacks_to[0]).glob("*.jpg"))
        return found == download.images, f"unpacked ({found:,} of {download.images:,} images)"
    return False, "missing"


def download_report(groups: list[str], root: Path, checksum: bool = False) -> tuple[bool, list[str]]:
    """(everything fine, the lines to print): per file its address, destination, size, sha256 and state."""
    lines, fine = [], True
    for group in groups:
        for d in DOWNLOADS[group]:
            ok, state = check_download(d, root, checksum)
            fine &= ok
            size = f"{d.size:,} bytes" if d.size else "size not recorded"
            lines += [f"[{group}] {d.folder}/{d.name}: {state}", f"    {d.url}  ({size})",
                      f"    sha256 {d.sha256 or 'not recorded: --sha256 prints the one on disk, to compare with the hub'}"]
            if not ok:
                lines.append(f"    get it: wget -c {d.url} -P {root / d.folder}"
                             + (f" && unzip -q {root / d.folder / d.name} -d {root / d.folder}" if d.name.endswith(".zip") else ""))
    return fine, lines


def subset_report(root: Path, split: str, n: int, seed: int | None) -> tuple[bool, str]:
    """Whether the pictures of read_coco(...).subset(n, seed) for a COCO split are all in <root>/coco/<split>."""
    ann = root / "coco" / "annotations"
    dataset = read_coco(ann / f"captions_{split}.json", ann / f"instances_{split}.json", root / "coco" / split,
                        errors="skip").subset(n, seed)
    missing = [r.file_name for r in dataset if not r.path.is_file()]
    return not missing, (f"subset of {len(dataset)} {split} images (seed {seed}): {len(dataset) - len(missing)} present"
                         + (f", {len(missing)} missing, e.g. {missing[:3]}" if missing else ""))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESET_DOWNLOADS), default="colab")
    parser.add_argument("--only", nargs="+", choices=sorted(DOWNLOADS), help="these groups instead of the preset's")
    parser.add_argument("--root", type=Path, help="data root (default: the work folder)")
    parser.add_argument("--sha256", action="store_true", help="hash the files on disk too")
    parser.add_argument("--images", type=int, help="check the pictures of a subset of this many COCO images")
    parser.add_argument("--seed", type=int, help="the subset is a seeded sample (default: the first by id)")
    parser.add_argument("--split", default="val2017", help="the COCO split the subset comes from")
    args = parser.parse_args(argv)
    root = args.root or work_dir()
    fine, lines = download_report(args.only or PRESET_DOWNLOADS[args.preset], root, args.sha256)
    print(f"data root {root}", *lines, sep="\n")
    if args.images and (root / "coco" / "annotations" / f"captions_{args.split}.json").is_file():
        ok, line = subset_report(root, args.split, args.images, args.seed)
        fine &= ok
        print(line)
    elif args.images:
        print(f"the subset of {args.images} images is checked once {args.split}'s annotations are unpacked")
    print("all there" if fine else "something is missing or wrong: see above")
    return 0 if fine else 1


if __name__ == "__main__":
    sys.exit(main())
