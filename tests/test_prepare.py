"""The prepare command: what to download for a preset, and what it finds on disk (never a download)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from llava_mini.world import prepare
from llava_mini.world.prepare import DOWNLOADS, Download, check_download, download_report, main


def sized(path, size):  # a sparse file of the recorded size: no disk used, the size check cannot tell
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def test_an_empty_root_lists_every_address_size_and_checksum(tmp_path, capsys):
    assert main(["--preset", "paper", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    for group in prepare.PRESET_DOWNLOADS["paper"]:
        for d in DOWNLOADS[group]:
            assert f"[{group}] {d.folder}/{d.name}: missing\n    {d.url}" in out
    assert "http://images.cocodataset.org/zips/train2017.zip  (19,336,861,798 bytes)" in out
    assert "sha256 4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05" in out  # val2017.zip
    assert "huggingface.co/datasets/liuhaotian/LLaVA-Instruct-150K/resolve/main/llava_instruct_150k.json  (size not recorded)" in out
    assert "sha256 not recorded: --sha256 prints the one on disk" in out
    assert f"wget -c http://images.cocodataset.org/zips/val2017.zip -P {tmp_path / 'coco'} && unzip -q" in out
    assert out.rstrip().endswith("something is missing or wrong: see above")


def test_present_truncated_and_unpacked_files(tmp_path):
    annotations, val = DOWNLOADS["coco-annotations"][0], DOWNLOADS["coco-val2017"][0]
    sized(tmp_path / "coco" / annotations.name, annotations.size)
    sized(tmp_path / "coco" / val.name, val.size - 1000)  # an interrupted download
    fine, lines = download_report(["coco-annotations", "coco-val2017"], tmp_path)
    assert not fine
    assert lines[0] == "[coco-annotations] coco/annotations_trainval2017.zip: ok (size matches)"
    assert "size mismatch: 815,584,330 bytes on disk, 815,585,330 expected" in lines[3]
    (tmp_path / "coco" / val.name).unlink()  # unzipped, then the archive deleted
    (tmp_path / "coco" / "val2017").mkdir()
    for i in range(val.images - 1):
        (tmp_path / "coco" / "val2017" / f"{i:012d}.jpg").touch()
    assert check_download(val, tmp_path) == (False, "unpacked (4,999 of 5,000 images)")
    (tmp_path / "coco" / "val2017" / "last.jpg").touch()
    assert check_download(val, tmp_path) == (True, "unpacked (5,000 of 5,000 images)")
    (tmp_path / "coco" / annotations.name).unlink()
    assert check_download(annotations, tmp_path) == (False, "missing")  # its json files are not there either


def test_checksums_are_verified_or_printed_for_recording(tmp_path, monkeypatch):
    payload = b"the real bytes"
    known = Download("http://example.invalid/data.zip", "x", len(payload), hashlib.sha256(payload).hexdigest())
    unknown = Download("http://example.invalid/notes.json", "x")
    monkeypatch.setitem(DOWNLOADS, "test", [known, unknown])
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "data.zip").write_bytes(payload)
    (tmp_path / "x" / "notes.json").write_bytes(b"{}")
    assert check_download(known, tmp_path, checksum=True) == (True, "ok (size and sha256 match)")
    assert check_download(unknown, tmp_path) == (True, "present, 2 bytes (no size recorded)")
    digest = hashlib.sha256(b"{}").hexdigest()
    assert check_download(unknown, tmp_path, checksum=True) == (True, f"present; checksum not recorded; sha256 on disk {digest}")
    (tmp_path / "x" / "data.zip").write_bytes(b"the fake bytes")  # same size, other content
    assert check_download(known, tmp_path) == (True, "ok (size matches)")  # a size check cannot see it...
    fine, lines = download_report(["test"], tmp_path, checksum=True)  # ...the checksum does
    assert not fine and lines[0].startswith("[test] x/data.zip: checksum mismatch: sha256 on disk ")


def test_a_subsets_pictures_are_checked_once_the_annotations_are_there(tmp_path, capsys):
    ann, images = tmp_path / "coco" / "annotations", tmp_path / "coco" / "val2017"
    ann.mkdir(parents=True), images.mkdir()
    listed = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 10, "height": 10} for i in (1, 2, 3)]
    (ann / "captions_val2017.json").write_text(json.dumps({"images": listed, "annotations": []}))
    (ann / "instances_val2017.json").write_text(json.dumps({"images": listed, "annotations": [], "categories": []}))
    (images / "000000000001.jpg").touch()
    main(["--only", "coco-annotations", "--root", str(tmp_path), "--images", "2"])
    assert "subset of 2 val2017 images (seed None): 1 present, 1 missing, e.g. ['000000000002.jpg']" in capsys.readouterr().out
    (images / "000000000002.jpg").touch()
    main(["--only", "coco-annotations", "--root", str(tmp_path), "--images", "2"])
    assert "subset of 2 val2017 images (seed None): 2 present\n" in capsys.readouterr().out


@pytest.mark.parametrize("preset", sorted(prepare.PRESET_DOWNLOADS))
def test_runs_as_a_module(tmp_path, preset):
    done = subprocess.run([sys.executable, "-m", "llava_mini.world.prepare", "--preset", preset, "--root", str(tmp_path)],
                          capture_output=True, text=True)
    assert done.returncode == 1 and f"data root {tmp_path}\n" in done.stdout and "missing" in done.stdout
