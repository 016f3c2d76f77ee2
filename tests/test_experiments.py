"""The experiment runner (issue #14): each variant changes one factor, the cache resumes a sweep, the verdict
rule on made-up numbers, and clear errors for bad input."""

import json
from dataclasses import asdict

import pytest

from llava_mini import experiments
from llava_mini.config import DataSettings, get_preset
from llava_mini.course import stage_files
from llava_mini.experiments import (FINDINGS, VARIANTS, stats, summarize, summary_table, variant_preset, verdict,
                                    verdicts)

# what each variant may change against the course's preset, as paths into asdict(preset)
FACTORS = {
    "course": set(),
    "all_types": {"stages.lora.type_repeats"},
    "conversation": {"stages.lora.type_repeats"},
    "detail": {"stages.lora.type_repeats"},
    "complex": {"stages.lora.type_repeats"},
    "captions": {"data.stage2_records", "stages.lora.type_repeats"},
    "last_layer": {"model.vision_feature_layer"},
    "no_stage1": {"stages.stage1.max_steps"},
    "linear": {"model.projector_type"},
}


def flat(tree, prefix="") -> dict:
    """{"a.b.c": leaf} for nested dicts (a dict-valued setting such as type_repeats counts as one leaf below)."""
    if not isinstance(tree, dict) or prefix.endswith("type_repeats"):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}.{key}" if prefix else key).items()}


def changed(a, b) -> set[str]:
    fa, fb = flat(json.loads(json.dumps(asdict(a)))), flat(json.loads(json.dumps(asdict(b))))
    return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_each_variant_changes_only_its_factor(name):
    assert set(FACTORS) == set(VARIANTS)
    assert changed(variant_preset(name, 0), variant_preset("course", 0)) == FACTORS[name]


def test_the_data_family_drops_drills_and_the_course_variant_is_the_course():
    repeats = {n: variant_preset(n).stages["lora"]["type_repeats"] for n in ("all_types", "conversation", "detail")}
    assert repeats["all_types"] == {"conversation": 4, "drill": 0}
    assert repeats["conversation"] == {"conversation": 4, "drill": 0, "detail": 0, "complex": 0}
    assert repeats["detail"] == {"conversation": 0, "drill": 0, "complex": 0}
    assert variant_preset("captions").data.stage2_records == ("stage1",)
    # at the course's steps, the course variant of seed 0 trains exactly the course's runs (notebook 04's
    # checkpoints are reused); the default sweep shares its stage 1 and shortens stage 2 only
    tiny, at_course_steps = get_preset("tiny"), experiments.sweep_base(lora_steps=120)
    for stage in ("stage1", "lora"):
        assert variant_preset("course", 0, at_course_steps).run_config(stage).to_dict() == {
            **tiny.run_config(stage).to_dict(), "evaluation": asdict(at_course_steps.evaluation)}
    sweep_course = variant_preset("course", 0)
    assert sweep_course.train_config("stage1") == tiny.train_config("stage1")
    assert sweep_course.train_config("lora") == tiny.train_config("lora", max_steps=experiments.SWEEP_STEPS["lora"])


def test_a_seed_changes_both_stages_and_stage1_is_shared_where_the_variant_leaves_it():
    assert changed(variant_preset("linear", 2), variant_preset("linear", 0)) == {"stages.stage1.seed", "stages.lora.seed"}
    key = lambda name: variant_preset(name, 1).run_config("stage1").key("towers", "records")  # noqa: E731
    shared = {n for n in VARIANTS if key(n) == key("course")}
    assert shared == {"course", "all_types", "conversation", "detail", "complex", "captions"}
    # what stage 2 reads is no part of stage 1's key, and a part of stage 2's
    lora = lambda name: variant_preset(name, 1).run_config("lora").key("towers", "records")  # noqa: E731
    assert lora("captions") != lora("all_types")


def test_stage2_records_chooses_the_files_and_rejects_unknown_names(tmp_path):
    data = {k: tmp_path / f"{k}.json" for k in ("stage1", "instruct", "drills")}
    run = get_preset("tiny", data={"stage2_records": ["stage1"]}).run_config("lora")
    assert run.data.stage2_records == ("stage1",) and stage_files(run, data) == [data["stage1"]]
    assert stage_files(get_preset("tiny").run_config("lora"), data) == [data["instruct"], data["drills"]]
    assert stage_files(run, {"stage1": data["stage1"]}) == [data["stage1"]]  # (COCO: no drills, skipped)
    with pytest.raises(ValueError, match="stage2_records"):
        DataSettings(stage2_records=("captions",))


def test_unknown_variant_names_are_refused_before_anything_runs(monkeypatch):
    monkeypatch.setattr(experiments, "held_out_set", lambda base: pytest.fail("started before checking the names"))
    for call in (lambda: variant_preset("conversations"), lambda: experiments.sweep(["course", "conversations"]),
                 lambda: experiments.main(["--variants", "course,conversations"])):
        with pytest.raises(ValueError, match="unknown variant 'conversations': choose from all_types"):
            call()


def test_the_verdict_rule_on_made_up_numbers():
    high, low = stats([0.80, 0.82, 0.84]), stats([0.60, 0.62, 0.64])
    assert high["mean"] == pytest.approx(0.82) and high["std"] == pytest.approx(0.02)
    assert verdict(high, low) == "reproduced"
    assert verdict(low, high) == "not reproduced"
    # a difference (0.03) smaller than the two spreads added (0.02 + 0.02): noise, whatever its sign
    assert verdict(stats([0.80, 0.82, 0.84]), stats([0.77, 0.79, 0.81])) == "within noise"
    assert verdict(stats([0.77, 0.79, 0.81]), stats([0.80, 0.82, 0.84])) == "within noise"
    assert verdict(stats([0.9]), stats([0.1, 0.2])) == "too few seeds"


def fake_run(name, seed, micro, chair=0.1):
    accuracy = {k: micro for k in experiments.KINDS}
    return {"variant": name, "seed": seed, "accuracy": accuracy, "micro": micro, "relative_score": {"micro": micro / 0.9},
            "description": {"chair_i": chair}}


def test_summary_and_verdicts_from_runs():
    runs = [fake_run(n, s, m) for n, ms in (("all_types", (0.80, 0.82, 0.84)), ("conversation", (0.60, 0.62, 0.64)),
                                             ("course", (0.70, 0.71, 0.72)), ("linear", (0.70, 0.72, 0.74)))
            for s, m in enumerate(ms)]
    summary = summarize(runs)
    assert list(summary) == ["all_types", "conversation", "course", "linear"]
    assert summary["all_types"]["seeds"] == [0, 1, 2]
    assert summary["all_types"]["relative"]["mean"] == pytest.approx(0.82 / 0.9)
    assert "| all_types | data | 3 | 82.0 ± 2.0 |" in summary_table(summary)
    rows = {(r["better"], r["worse"]): r for r in verdicts(summary)}
    assert set(rows) == {("all_types", "conversation"), ("course", "linear")}  # the others' variants did not run
    assert rows["all_types", "conversation"]["verdict"] == "reproduced"
    assert rows["course", "linear"]["verdict"] == "within noise"
    assert all(f.better in VARIANTS and f.worse in VARIANTS for f in FINDINGS)


@pytest.fixture
def toy_base(tmp_path, monkeypatch):
    """The sweep at toy size in its own work folder: a 52-image world, 2 steps a stage, a few questions."""
    monkeypatch.setenv("LLAVA_MINI_WORK", str(tmp_path / "work"))
    base = experiments.sweep_base(images=6, per_kind=1, descriptions=1)
    stages = {k: {**v, "max_steps": 2, "batch_size": 4} for k, v in base.stages.items()}
    return get_preset(base, stages=stages, world={"sizes": {"train": 40, "val": 4, "test": 8}},
                      evaluation={"max_new_tokens": 8})


def test_a_sweep_resumes_from_its_cache_without_retraining(toy_base, tmp_path, monkeypatch):
    calls = []
    real = experiments.train_and_evaluate
    monkeypatch.setattr(experiments, "train_and_evaluate", lambda spec, *a, **k: calls.append(spec) or real(spec, *a, **k))
    first = experiments.sweep(["course", "no_stage1"], [0], toy_base)
    assert len(calls) == 2 and not any(r["cached"] for r in first)
    assert {r["variant"] for r in first} == {"course", "no_stage1"} and 0 <= first[0]["micro"] <= 1
    # no stage 1: a stage-1 checkpoint of zero steps, its projector the seeded initialization
    (empty,) = [p for p in (tmp_path / "work" / "checkpoints").glob("tiny-stage1-*")
                if json.loads((p / "final" / "history.json").read_text()) == []]

    again = experiments.sweep(["course", "no_stage1"], [0], toy_base)  # as after an interruption: nothing to train
    assert len(calls) == 2 and all(r["cached"] for r in again)
    assert [r["micro"] for r in again] == [r["micro"] for r in first]
    assert len(list((tmp_path / "work" / "experiments").glob("text_reference-*.json"))) == 1

    # a longer sweep over the same runs trains only what is new (seed 1 of the course variant)
    longer = experiments.sweep(["course"], [0, 1], toy_base)
    assert len(calls) == 3 and [r["cached"] for r in longer] == [True, False] and calls[-1].train_config("lora").seed == 1


def test_paired_differences_pair_the_seeds():
    runs = [fake_run("course", 0, 0.70), fake_run("course", 1, 0.80), fake_run("course", 2, 0.75),
            fake_run("linear", 0, 0.68), fake_run("linear", 1, 0.79), fake_run("linear", 2, 0.70),
            fake_run("last_layer", 0, 0.72), fake_run("last_layer", 2, 0.60)]  # seed 1 missing: left out
    assert experiments.paired_differences(runs, "course", "linear", "micro") == pytest.approx({0: 0.02, 1: 0.01, 2: 0.05})
    assert experiments.paired_differences(runs, "course", "last_layer", "micro") == pytest.approx({0: -0.02, 2: 0.15})
    rows = {r["worse"]: r for r in verdicts(summarize(runs))}
    table = experiments.paired_table(runs, [rows["linear"], rows["last_layer"]])
    # the means' spreads overlap (within noise), yet every seed agrees on the sign; last_layer's two seeds do not
    assert rows["linear"]["verdict"] == "within noise"
    assert "seed 0: +2.0, seed 1: +1.0, seed 2: +5.0 | 2.7 ± 2.1 | yes |" in table
    assert "seed 0: -2.0, seed 2: +15.0 | 6.5 ± 12.0 | no |" in table


def test_another_world_changes_only_the_world():
    base, other = experiments.sweep_base(), experiments.sweep_base(world_seed=1)
    spec = variant_preset("no_stage1", 2, other)
    assert spec.world.seed == 1 and spec.world.sizes == base.world.sizes
    assert asdict(spec) == {**asdict(variant_preset("no_stage1", 2, base)), "world": asdict(spec.world)}
