"""The `colab` path on COCO 2017, end to end, on this test's own files (no network, no hub):

    a tiny COCO 2017 tree (PNG pictures, captions_val2017.json, instances_val2017.json) in a tmp work folder
    -> course.coco_subsets: disjoint seeded train / held-out subsets of val2017
    -> course.coco_instruct_data through a loopback OpenAI-compatible teacher (127.0.0.1, a thread), resumable
    -> notebooks 01 and 02's COCO cells themselves, with PRESET = "colab"
    -> CHAIR over COCO's object names (hand-computed), the judge, and grounding questions for COCO images
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import matplotlib
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from llava_mini import config, course  # noqa: E402
from llava_mini.attention import (  # noqa: E402
    box_coverage, coco_grounding_questions, grounding_questions, masking_experiment, plot_question_layers,
    plot_token_layers, run_grounding, summarize_grounding,
)
from llava_mini.config import get_preset  # noqa: E402
from llava_mini.evaluate import (  # noqa: E402
    JUDGE_SYSTEM, coco_mentions, coco_terms, description_metrics, evaluate_coco, score_coco_description,
)
from llava_mini.evaluate import run as evaluate_run  # noqa: E402
from llava_mini.files import FileFormatError  # noqa: E402
from llava_mini.teacher import (  # noqa: E402
    ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, OpenAITeacher, TeacherError, format_qa, load_records, response_type_of,
    validate_training_record,
)
from llava_mini.world import read_split  # noqa: E402
from stand_ins import bpe_tokenizer, one_thread, tiny_llama, tiny_llava, tiny_processor, tiny_vision  # noqa: E402, F401

KEY = "sk-test-COLAB-PATH-91b2-do-not-leak"
MODEL = "loopback-gpt"
REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": 6, "test": 3}  # of the 10 annotated images below; one is left in neither subset
CATEGORIES = {1: "person", 3: "car", 15: "bench", 17: "cat", 18: "dog", 47: "cup", 59: "pizza", 67: "dining table"}
# id, width, height, captions, boxes (category, [x, y, w, h], iscrowd). Every caption is unique, so a held-out
# image's caption reaching the teacher would show.
IMAGES = [
    (139, 64, 48, ["A man walks his dog past a bench.", "A person and a dog on a sidewalk."],
     [("person", [4, 4, 20, 40], 0), ("dog", [30, 20, 20, 20], 0)]),
    (285, 48, 64, ["A pizza on a table.", "A pizza sits on a wooden table."],
     [("pizza", [10, 10, 20, 20], 0), ("dining table", [0, 20, 48, 44], 0), ("cup", [30, 5, 10, 10], 0)]),
    (632, 64, 64, ["A cat sleeping.", "A small cat asleep in the sun."], [("cat", [8, 8, 40, 30], 0)]),
    (724, 64, 48, ["Two people stand beside a car."],
     [("person", [2, 2, 10, 30], 0), ("person", [14, 2, 10, 30], 0), ("car", [30, 10, 30, 30], 0)]),
    (776, 64, 48, ["A crowd gathers near a park bench."], [("person", [0, 0, 64, 30], 1), ("bench", [5, 30, 40, 15], 0)]),
    (785, 48, 48, ["Two dogs play in the grass."], [("dog", [0, 0, 20, 20], 0), ("dog", [24, 24, 20, 20], 0)]),
    (802, 64, 48, ["A cup of coffee on a kitchen table."], [("cup", [20, 5, 8, 8], 0), ("dining table", [0, 10, 64, 38], 0)]),
    (872, 48, 64, ["A red car parked on a street."], [("car", [4, 20, 40, 30], 0)]),
    (885, 64, 48, ["An empty street at night."], []),
    (1000, 64, 48, ["A dog lies under a wooden bench."], [("dog", [10, 20, 20, 20], 0), ("bench", [0, 60, 10, 10], 0)]),
]  # the last bench pokes out of its 64 x 48 picture: read with errors="skip", it is counted, not kept


def write_coco(root: Path) -> Path:
    """<root>/coco/annotations/{captions,instances}_val2017.json and <root>/coco/val2017/*.png, as COCO 2017 lays
    them out (with its extra keys; category ids not contiguous)."""
    ann, pictures = root / "coco" / "annotations", root / "coco" / "val2017"
    ann.mkdir(parents=True)
    pictures.mkdir(parents=True)
    images, captions, boxes = [], [], []
    for image_id, w, h, texts, objects in IMAGES:
        name = f"{image_id:012d}.png"
        Image.new("RGB", (w, h), (image_id % 256, 90, 150)).save(pictures / name)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h, "license": 1,
                       "coco_url": f"http://images.cocodataset.org/val2017/{name}"})
        captions += [{"id": len(captions) + 1, "image_id": image_id, "caption": t} for t in texts]
        ids = {v: k for k, v in CATEGORIES.items()}
        boxes += [{"id": len(boxes) + 1, "image_id": image_id, "category_id": ids[c], "bbox": b, "iscrowd": crowd,
                   "area": b[2] * b[3], "segmentation": []} for c, b, crowd in objects]
    (ann / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": captions}))
    (ann / "instances_val2017.json").write_text(json.dumps({"images": images, "annotations": boxes, "categories": [
        {"id": k, "name": v, "supercategory": "x"} for k, v in CATEGORIES.items()]}))
    return root


class LoopbackTeacher:
    """POST /v1/chat/completions on 127.0.0.1 in a thread. A teacher call gets a valid response of the type its
    system message asks for (built from the context's first line), a judge call the scores "8 6"; every
    request is counted and its last user message (the context) kept."""

    def __init__(self):
        self.requests, self.contexts, self.lock = 0, [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    server.contexts.append(body["messages"][-1]["content"])
                if self.headers.get("Authorization") != f"Bearer {KEY}" or body["model"] != MODEL:
                    return self.reply(401, {"error": {"message": "bad key or model"}})
                text = server.answer(body["messages"])
                self.reply(200, {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [
                    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]})

            def reply(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def answer(messages) -> str:
        first = messages[-1]["content"].splitlines()[0]
        kind = response_type_of(messages)
        if messages[0]["content"] == JUDGE_SYSTEM:
            return "8 6\nAssistant 1 names every object; Assistant 2 misses some."
        if kind == "conversation":
            return format_qa([("What is happening in this picture?", first), ("Is it day or night?", "It is hard to say.")])
        if kind == "detail":
            return f"{first} The scene is calm, and the light is soft and even."
        return format_qa([("Why might someone take this photo?", f"{first} It is an everyday moment, so it was "
                                                                  "most likely taken to remember an ordinary day.")])

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A work folder holding the COCO tree; the colab preset drawing SIZES from it; no teacher configured."""
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "work"))
    monkeypatch.setenv("LLAVA_MINI_FIGURES", str(tmp_path / "figures"))
    for name in (ENV_API_KEY, ENV_BASE_URL, ENV_MODEL, "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(config.PRESETS, "colab", get_preset("colab", world={"sizes": SIZES}))
    return write_coco(tmp_path / "work")


@pytest.fixture
def teacher_server(monkeypatch):
    with LoopbackTeacher() as server:
        for name, value in ((ENV_API_KEY, KEY), (ENV_BASE_URL, server.url), (ENV_MODEL, MODEL)):
            monkeypatch.setenv(name, value)
        yield server


def captions_of(dataset) -> set[str]:
    return {c for r in dataset for c in r.captions}


# ----------------------------------------------------------------------------- the subsets


def test_subsets_are_disjoint_seeded_draws_from_val2017(work):
    subsets = course.coco_subsets("colab")
    train, test = ({r.file_name for r in subsets[k]} for k in ("train", "test"))
    assert (len(train), len(test)) == (6, 3) and not train & test
    assert subsets["train"][0].image_dir == work / "coco" / "val2017" == work / get_preset("colab").data.image_folder
    assert {k: [r.image_id for r in v] for k, v in course.coco_subsets("colab").items()} == {
        k: [r.image_id for r in v] for k, v in subsets.items()}                     # the same draw every time
    assert [r.image_id for r in subsets["train"]] != [i for i, *_ in IMAGES[:6]]  # seeded, not the first by id
    assert dict(subsets["train"].skipped) == {"box outside the image": 1}
    assert get_preset("paper").data.image_folder == "coco/train2017"  # paper trains on train2017 (prepare lists it)


def test_subsets_larger_than_the_annotations_are_refused(work, monkeypatch):
    monkeypatch.setitem(config.PRESETS, "colab", get_preset("colab", world={"sizes": {"train": 8, "test": 3}}))
    with pytest.raises(ValueError, match=r"annotations: 10 images of val2017 annotated, fewer than the 8 \+ 3"):
        course.coco_subsets("colab")


def test_what_the_path_needs_is_said_in_words(work, tmp_path, monkeypatch):
    assert "hub preset" in course.coco_needs("tiny")
    assert course.coco_needs("colab") is None                               # notebook 01 needs no teacher
    assert course.coco_needs("colab", teacher=True) == course.TEACHER_NEEDED
    monkeypatch.setenv(ENV_API_KEY, KEY)                                     # a key but no model
    assert "LLAVA_MINI_TEACHER_MODEL" in course.coco_needs("colab", teacher=True)
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "empty"))
    assert "python -m llava_mini.world.prepare --preset colab" in course.coco_needs("colab")
    monkeypatch.delenv(ENV_API_KEY)
    with pytest.raises(ValueError, match="no teacher for the COCO data; it needs a teacher: LLAVA_MINI_TEACHER_API_KEY"):
        course.coco_instruct_data("colab")


# ----------------------------------------------------------------------------- notebook 02's colab path


def test_instruct_data_for_the_train_subset_through_a_loopback_teacher_resumes(work, teacher_server):
    held_out = captions_of(course.coco_subsets("colab")["test"])
    # A run cut short (its request budget spent after 4 calls) writes what it has and vouches for nothing ...
    cut = course.coco_instruct_data("colab", teacher=OpenAITeacher(max_requests=4), progress=False)
    assert teacher_server.requests == 4 and json.loads(cut["summary"].read_text())["missing"] == 14
    # ... the next run asks only for the 14 answers missing, ...
    paths = course.coco_instruct_data("colab", workers=3, progress=False)
    assert teacher_server.requests == 18  # 6 images x 3 types
    # ... and later runs ask nothing: the files are reused, or (force) rebuilt from the cache.
    assert course.coco_instruct_data("colab", progress=False) == paths
    course.coco_instruct_data("colab", force=True, progress=False)
    assert teacher_server.requests == 18

    data = course.training_data("colab")  # the files are where the preset reads them
    assert (data["instruct"], data["stage1"], data["images"]) == (paths["instruct"], paths["stage1"], paths["images"])
    assert paths["instruct"].name == "coco_llava_instruct_train.json" and paths["images"] == work / "coco" / "val2017"
    train = course.coco_subsets("colab")["train"]
    records, stage1 = load_records(paths["instruct"]), load_records(paths["stage1"])
    assert sorted(r["id"] for r in records) == sorted(f"{Path(r.file_name).stem}_{t}" for r in train
                                                      for t in ("conversation", "detail", "complex"))
    assert len(stage1) == sum(len(r.captions) for r in train)
    assert json.loads(paths["drills"].read_text()) == []  # the shapes world's drills would be false of photos
    assert {r["conversations"][1]["value"] for r in stage1} == captions_of(train)
    for record in records + stage1:
        validate_training_record(record, paths["images"])  # the picture is there too
    summary = json.loads(paths["summary"].read_text())
    assert summary["missing"] == 0 and summary["rejected"] == {} and summary["teacher"].startswith(f"openai({MODEL}")
    # The held-out images never reached the teacher, nor the training files.
    assert not any(c in context for context in teacher_server.contexts for c in held_out)
    assert not held_out & {r["conversations"][1]["value"] for r in stage1}
    for path in work.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), path


def notebook_cells(number: str) -> list[str]:
    (path,) = (REPO / "notebooks").glob(f"{number}_*.ipynb")
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]


def run_notebook_cell(number: str, marker: str, **parameters) -> dict:
    """The notebook's imports (its first cell: the Colab guard does nothing here), its parameters cell with
    ``parameters`` put over it, then the one cell that contains ``marker``; returns the namespace."""
    cells = notebook_cells(number)
    namespace: dict = {}
    exec(cells[0], namespace)
    exec(next(c for c in cells if c.startswith("PRESET = ")), namespace)
    namespace.update(parameters)
    (cell,) = [c for c in cells if marker in c]
    exec(cell, namespace)
    return namespace


def test_notebook_02_cell_runs_the_path_on_colab_and_skips_it_offline(work, teacher_server, capsys, monkeypatch):
    run_notebook_cell("02", "coco_instruct_data(PRESET", PRESET="colab", COCO_WORKERS=2)
    out = capsys.readouterr().out
    assert "wrote coco_llava_instruct_train.json and coco_stage1_captions_train.json for 6 images:" in out
    assert f"'teacher': 'openai({MODEL}" in out and "'missing': 0" in out and teacher_server.requests == 18
    run_notebook_cell("02", "coco_instruct_data(PRESET", PRESET="colab")
    assert teacher_server.requests == 18 and capsys.readouterr().out == out  # rerun of the cell: reused

    run_notebook_cell("02", "coco_instruct_data(PRESET")  # the parameters cell's own PRESET: tiny
    assert capsys.readouterr().out == ("COCO instruction data skipped (offline): preset 'tiny' needs a hub preset "
                                       "(PRESET 'colab' or 'paper'; 'tiny' trains on the shapes world).\n")
    monkeypatch.delenv(ENV_API_KEY)
    monkeypatch.delenv(ENV_BASE_URL)
    run_notebook_cell("02", "coco_instruct_data(PRESET", PRESET="colab")
    out = capsys.readouterr().out
    assert out.startswith("COCO instruction data skipped (offline)") and ENV_API_KEY in out and out.count("\n") == 1


def test_notebook_01_cell_shows_coco_on_colab_and_skips_it_offline(work, capsys, monkeypatch, tmp_path):
    run_notebook_cell("01", "coco_subsets(PRESET)", PRESET="colab")
    out = capsys.readouterr().out
    assert "{'train': 6, 'test': 3} skipped annotations: {'box outside the image': 1}" in out
    assert (tmp_path / "figures" / "01_coco_examples.png").is_file()
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "empty"))
    run_notebook_cell("01", "coco_subsets(PRESET)", PRESET="colab")
    out = capsys.readouterr().out
    assert out.startswith("COCO 2017 skipped (offline): preset 'colab' needs COCO 2017 in ") and out.count("\n") == 1


# ----------------------------------------------------------------------------- CHAIR over COCO's object names


def test_coco_words_cover_the_categories_and_each_word_names_its_own():
    categories = json.loads((REPO / "data" / "coco" / "chair_words.json").read_text())["categories"]
    assert len(categories) == 80 and set(CATEGORIES.values()) <= set(categories)
    for category, words in categories.items():
        for word in words:
            assert coco_mentions(f"there is a {word} here") == [category], word
    assert coco_mentions("Hot dogs, a teddy bear, two cell phones and the mice.") == [
        "hot dog", "teddy bear", "cell phone", "mouse"]                  # the longer name wins; irregular plurals
    assert coco_mentions("A man in an orange shirt wears glasses on a ski slope.") == ["person"]  # not objects here


def test_a_word_under_two_categories_is_refused(tmp_path):
    bad = tmp_path / "words.json"
    bad.write_text(json.dumps({"categories": {"dog": ["dog", "puppy"], "cat": ["cat", "puppy"]}}))
    with pytest.raises(FileFormatError, match=r"words.json: 'puppy' is listed under 'dog' and 'cat'"):
        coco_terms(bad)
    bad.write_text(json.dumps({"dog": ["dog"]}))
    with pytest.raises(FileFormatError, match="words.json: expected"):
        coco_terms(bad)


DESCRIPTIONS = {  # image id -> a model's description; what CHAIR must make of it, worked out by hand below
    139: "A woman and her puppy sit on a bench next to a car.",  # person, dog, bench (a caption names it), car: 1 false
    285: "A hot dog and a pizza on a table.",                    # hot dog (false), pizza, dining table; the cup missed
    632: "A kitten sleeping.",                                   # cat
}


def test_chair_on_coco_names_by_hand(work):
    by_id = read_split(work / "coco", "val2017", errors="skip").by_id()
    scores = [score_coco_description(text, by_id[i]) for i, text in DESCRIPTIONS.items()]
    assert [s["hallucinated"] for s in scores] == [["car"], ["hot dog"], []]
    assert [s["mentioned"] for s in scores][1] == ["hot dog", "pizza", "dining table"]
    metrics = description_metrics(scores)
    # CHAIR_i: 2 hallucinated of 4 + 3 + 1 = 8 mentions; CHAIR_s: 2 of 3 descriptions; recall: (2 + 2 + 1) of 2 + 3 + 1
    assert (metrics["chair_i"], metrics["chair_s"], metrics["recall"]) == (2 / 8, 2 / 3, 5 / 6)
    assert (metrics["mentions"], metrics["hallucinations"], metrics["objects"]) == (8, 2, 6)


def test_evaluate_coco_scores_descriptions_and_asks_the_judge(work, teacher_server, monkeypatch, capsys):
    records = [read_split(work / "coco", "val2017", errors="skip").by_id()[i] for i in DESCRIPTIONS]
    asked = []

    def describe(model, tokenizer, image_processor, items, **kwargs):  # the model's answers, fixed
        asked.extend(items)
        return [DESCRIPTIONS[records[k].image_id] for k in range(len(items))]
    monkeypatch.setattr(evaluate_run, "generate_answers", describe)
    result = evaluate_coco(None, None, None, records, n_descriptions=3)
    assert all(isinstance(image, Image.Image) for image, _ in asked) and len(asked) == 3
    assert (result["description"]["chair_i"], result["description"]["chair_s"]) == (2 / 8, 2 / 3)
    assert [d["hallucinated"] for d in result["description"]["items"]] == [["car"], ["hot dog"], []]
    judge = result["judge"]  # 3 reference descriptions + 3 reviews, each "8 6": 6 / 8 of the reference
    assert teacher_server.requests == 6 and judge["judged"] == 3 and judge["relative_score"] == 75.0
    assert any("A man walks his dog past a bench." in c for c in teacher_server.contexts)  # told the scene as text

    class DownJudge:
        identity = "down"

        def complete(self, messages):
            raise TeacherError("no usable response after 7 attempts")
    failed = evaluate_coco(None, None, None, records, n_descriptions=3, judge=DownJudge())
    assert failed["judge"] is None and failed["description"]["chair_i"] == 2 / 8  # CHAIR survives a failed judge
    assert "LLM judge failed: no usable response" in capsys.readouterr().err
    for name in (ENV_API_KEY, ENV_BASE_URL):
        monkeypatch.delenv(name)
    assert evaluate_coco(None, None, None, records, n_descriptions=1)["judge"] is None
    assert "LLM judge skipped" in capsys.readouterr().err and teacher_server.requests == 6


# ----------------------------------------------------------------------------- grounding on COCO images


def test_grounding_questions_for_coco_name_one_boxed_object(work):
    records = read_split(work / "coco", "val2017", errors="skip").records
    with pytest.raises(ValueError, match="is not of the shapes world"):
        grounding_questions(records)  # notebook 05's own questions ask colours and shapes: not on COCO
    questions = {q.record.image_id: q for q in coco_grounding_questions(records)}
    assert {i: (q.question, q.bbox) for i, q in questions.items()} == {
        139: ("Is there a person in the image?", (4.0, 4.0, 20.0, 40.0)),      # the larger of two single objects
        285: ("Is there a dining table in the image?", (0.0, 20.0, 48.0, 44.0)),
        632: ("Is there a cat in the image?", (8.0, 8.0, 40.0, 30.0)),
        724: ("Is there a car in the image?", (30.0, 10.0, 30.0, 30.0)),       # two persons: neither box is "the"
        776: ("Is there a bench in the image?", (5.0, 30.0, 40.0, 15.0)),      # a crowd box is no one object
        802: ("Is there a dining table in the image?", (0.0, 10.0, 64.0, 38.0)),
        872: ("Is there a car in the image?", (4.0, 20.0, 40.0, 30.0)),
        1000: ("Is there a dog in the image?", (10.0, 20.0, 20.0, 20.0)),
    }  # 785 (two dogs) and 885 (no boxes) have none
    assert all((q.kind, q.expected) == ("existence", "yes") for q in questions.values())
    assert len(coco_grounding_questions(records, n=3)) == 3


def test_grounding_masking_and_figures_run_on_coco_images(work, tmp_path):
    records = read_split(work / "coco", "val2017", errors="skip").records
    tokenizer = bpe_tokenizer(["USER: Is there a dog in the image? ASSISTANT: Yes, there is a dog."] * 4)
    lm = tiny_llama(len(tokenizer), seed=1, num_hidden_layers=2, attn_implementation="eager")
    model, processor = tiny_llava(tiny_vision(seed=0), lm, tokenizer, projector_std=0.5, seed=0).eval(), tiny_processor()
    questions = coco_grounding_questions(records, n=4)
    results = run_grounding(model, tokenizer, processor, questions, max_new_tokens=3, batch_size=4)
    assert len(results) == 4
    for r in results:  # the box, in the picture padded to a square, covers the patches it should
        q = r.question
        assert torch.equal(r.coverage, box_coverage(q.bbox, q.record.width, q.record.height, (4, 4)))
        assert r.coverage.sum() > 0 and r.by_layer.shape == (2,)
    assert summarize_grounding(results)["by_kind"]["existence"]["n"] == 4
    report = masking_experiment(model, tokenizer, processor, results, ks=(2,), max_new_tokens=3)
    assert report["n_questions"] == 4 and 0 <= report["box"]["accuracy"] <= 1
    for draw in (lambda p: plot_question_layers(results[:2], processor, path=p, title="COCO", answer_word=True),
                 lambda p: plot_token_layers(results[0], processor, path=p)):  # notebook 05's per-question figures
        fig = draw(tmp_path / "figure.png")
        assert fig.axes and (tmp_path / "figure.png").stat().st_size > 0
        plt.close(fig)
