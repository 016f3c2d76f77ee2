"""A run's whole configuration as one dataclass tree, and the three presets that fill it.

    RunConfig                       what one training run is: printed when it starts, saved whole in the
      preset, stage                 checkpoint's run.json, and (minus the evaluation settings, which do not
      world: WorldSettings          change the weights) the one key that decides whether a checkpoint is
      data: DataSettings            reused or retrained (course.checkpoint_dir names the folder after it)
      model: ModelSettings
      train: TrainConfig
      evaluation: EvalSettings

The presets are three sizes of the same recipe:

    tiny   the shipped backbones (data/backbones), the generated shapes world; a 2-core CPU, minutes
    colab  CLIP ViT-B/16 + Qwen2.5-0.5B-Instruct from the hub, COCO 2017; a free T4 (fp16, QLoRA)
    paper  CLIP ViT-L/14-336 + Vicuna-7B v1.5 (4-bit for QLoRA); one A100/H100; the LLaVA v1.5 LoRA recipe

Hub names are ordinary ``from_pretrained`` names: point them at local folders and nothing else changes,
``get_preset("colab", model={"lm": "/my/folder"})``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

from llava_mini.files import fingerprint
from llava_mini.paths import DATA_DIR

STAGES = ("stage1", "lora", "qlora")  # the course's three checkpoints


PRECISIONS = ("auto", "fp32", "bf16", "fp16")
RECORD_FILES = ("stage1", "instruct", "drills")  # the record files course.training_data() names


@dataclass
class TrainConfig:
    """Everything one training run needs besides the model and the data.

    batch_size is the *global* batch of one optimizer step (what the paper quotes: 128 / 256 / 32).
    Each process runs micro-batches of ``micro_batch_size`` and accumulates gradients over
    ``batch_size / (micro_batch_size x processes)`` of them.
    """

    stage: int = 1                        # 1: projector only; 2: LoRA adapters + projector
    output_dir: str = "checkpoints/run"
    max_steps: int = 100                  # optimizer steps
    batch_size: int = 16                  # examples per optimizer step, all processes together
    micro_batch_size: int | None = None   # examples per forward pass per process (None: no accumulation)
    lr: float = 1e-3                      # stage 1: projector; stage 2: LoRA adapters
    projector_lr: float | None = None     # stage 2: the projector's own learning rate (None: lr)
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0             # LLaVA uses none
    max_grad_norm: float | None = 1.0
    # LoRA (stage 2): adapters on every linear layer of the LM unless lora_targets says otherwise
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: str | list[str] = "all-linear"   # peft's "all-linear" skips the output layer (lm_head)
    qlora: bool = False                   # the LM was loaded in 4-bit (see qlora_quantization_config)
    gradient_checkpointing: bool = False  # recompute LM activations in backward: memory for ~30% time
    checkpoint_every: int = 1             # with checkpointing, only every n-th LM layer (the rest keep theirs)
    # with checkpointing, a layer also keeps the outputs of its frozen matmuls and attention and reruns only the
    # cheap ops in backward (selective checkpointing, model/recompute.py): the same numbers up to rounding, more
    # memory, meant for less time (not seen at the colab shape on a 2-core CPU: README)
    keep_matmul_outputs: bool = False
    # The labelled-only loss computes at most this many LM-head logits at once (rows = this // vocabulary; 2**26:
    # 256 MiB in fp32, 441 rows of a 152K vocabulary, more than the tiny preset ever has); None: all at once.
    loss_chunk_logits: int | None = 2 ** 26
    # The vision tower is frozen in both stages, so each image's features are computed once and reused (kept
    # in host RAM, N x D_vision per distinct image; keyed by the pixels, so an augmented image is a new one).
    cache_image_features: bool = False
    # On the CPU (Linux), tensors of this many bytes or more get their own memory mapping, returned to the system
    # when freed, so resident memory follows the tensors alive (train.memory.return_freed_host_memory); None:
    # malloc's own rule, which can keep GiBs of freed tensors resident
    host_mmap_threshold: int | None = None
    precision: str = "auto"               # auto: bf16 where supported, fp16 on older GPUs (T4), fp32 on CPU
    group_by_length: bool = True          # batch examples of similar length together (less padding)
    # Stage-2 data: how often each record of a response type appears in the stream ({"conversation": 3};
    # types not named: once, 0 drops a type). Used by course_model; train() takes the dataset as given.
    type_repeats: dict[str, int] | None = None
    save_every: int | None = None         # step checkpoints (with optimizer state) every N steps
    keep_checkpoints: int | None = 2      # keep only the newest N step checkpoints (None: all)
    seed: int = 0
    num_workers: int = 0                  # DataLoader workers
    progress: bool = True                 # tqdm bar

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.checkpoint_every < 1 or (self.loss_chunk_logits is not None and self.loss_chunk_logits < 1):
            raise ValueError("checkpoint_every and loss_chunk_logits must be positive")
        if self.qlora and self.stage != 2:
            raise ValueError("qlora applies to stage 2 (stage 1 trains only the projector)")

    def accumulation_steps(self, num_processes: int = 1) -> int:
        """Micro-batches per optimizer step on each process."""
        micro = self.micro_batch_size or max(1, self.batch_size // num_processes)
        if self.batch_size % (micro * num_processes):
            raise ValueError(
                f"batch_size {self.batch_size} is not a multiple of micro_batch_size {micro} x {num_processes} processes"
            )
        return self.batch_size // (micro * num_processes)

    def micro_batch(self, num_processes: int = 1) -> int:
        return self.batch_size // (self.accumulation_steps(num_processes) * num_processes)


@dataclass(frozen=True)
class WorldSettings:
    """The images a preset draws: the shapes world it generates (data source "course"), or for COCO the seeded,
    disjoint "train" and "test" subsets of its image folder (course.coco_subsets)."""

    seed: int = 0
    sizes: dict = field(default_factory=lambda: {"train": 4000, "val": 300, "test": 500})  # images per split


@dataclass(frozen=True)
class DataSettings:
    """Where the training records come from and how they become sequences."""

    source: str = "course"              # "course": the world + the symbolic teacher; "files": the paths below
    teacher: str = "symbolic"           # who writes the course's data: "symbolic" or "env" (teacher_from_env)
    stage1_file: str | None = None      # "files": caption records, relative to the work folder
    instruct_file: str | None = None    # "files": instruction records, relative to the work folder
    image_folder: str | None = None     # "files": what each record's "image" is relative to
    max_length: int = 2048              # tokens per example, image tokens included
    max_records: int | None = None      # train on a seeded sample of this many records (None: as the steps need)
    # The record files stage 2 trains on, by their course.training_data() names (one the data lacks is skipped:
    # COCO has no drills); ("stage1",) trains it on the caption records, the paper's naive caption expansion
    stage2_records: tuple[str, ...] = ("instruct", "drills")
    # How the drills' relation answers reach their verdict (teacher.RELATION_STEPS): an image shows no box lines
    # to walk down, so "verdict" (none) or "centres" (each object's centre along the asked axis, then the verdict)
    drill_relation_steps: str = "verdict"
    drill_colour_steps: str = "scan"    # "scan" the box lines up to the asked shape, or "direct" (teacher.COLOUR_STEPS)
    # How often each kind of drill question is drawn ({"relation": 6.0, "region": 6.0, ...}: keys name the teacher's
    # question makers, teacher.DRILL_KINDS); None: teacher.DRILL_WEIGHTS
    drill_weights: dict[str, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "stage2_records", tuple(self.stage2_records))  # (a list from JSON or a caller)
        unknown = set(self.stage2_records) - set(RECORD_FILES)
        if unknown or not self.stage2_records:
            raise ValueError(f"stage2_records must name some of {RECORD_FILES}, got {self.stage2_records!r}")


@dataclass(frozen=True)
class ModelSettings:
    """The two towers, how they are joined, and the chat format."""

    vision: str                         # hub name or folder: a CLIP / SigLIP checkpoint
    lm: str                             # hub name or folder: a causal LM (also its tokenizer unless `tokenizer`)
    tokenizer: str | None = None
    chat_template: str | None = None    # used only when the tokenizer has none
    system_prompt: str | None = None
    projector_type: str = "mlp2x_gelu"  # "linear" (LLaVA v1) or "mlp2x_gelu" (v1.5)
    vision_feature_layer: int = -2      # hidden states of the second-to-last layer


# The longest answer generated for a held-out question: a relation answer walks down the box lines to both
# named objects before its verdict (up to ~89 tokens with six objects).
ANSWER_TOKENS = 96


@dataclass(frozen=True)
class EvalSettings:
    """The held-out evaluation (notebook 04): questions from the ground truth of the test split."""

    split: str = "test"
    images: int = 500                   # first N images of the split
    seed: int = 0                       # which questions are drawn
    max_per_kind: int = 100             # questions per kind (colour, shape, count, relation, existence)
    n_descriptions: int = 40            # detailed descriptions scored for hallucinations
    max_new_tokens: int = ANSWER_TOKENS


@dataclass(frozen=True)
class Preset:
    """A recipe: every section of a run's config plus the training settings of each stage."""

    name: str
    model: ModelSettings
    data: DataSettings = DataSettings()
    world: WorldSettings = WorldSettings()
    evaluation: EvalSettings = EvalSettings()
    stages: dict = field(default_factory=dict)   # "stage1" / "lora" / "qlora" -> TrainConfig fields

    def train_config(self, stage: str, **overrides) -> TrainConfig:
        """The TrainConfig of ``stage`` ("stage1", "lora", "qlora"), with ``overrides`` applied."""
        if stage not in self.stages:
            raise ValueError(f"preset {self.name!r} has no stage {stage!r} (it has {sorted(self.stages)})")
        unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}: TrainConfig has no such field")
        return TrainConfig(**{**self.stages[stage], **overrides})

    def run_config(self, stage: str, **overrides) -> RunConfig:
        """The whole configuration of one run of ``stage``; ``overrides`` change its TrainConfig."""
        return RunConfig(self.name, stage, self.world, self.data, self.model, self.train_config(stage, **overrides),
                         self.evaluation)


# Settings that say where and how visibly a run goes, not what it learns: not part of the reuse key
# (nor the exact speed / memory options: they change the weights by rounding only).
NOT_IN_KEY = {"output_dir", "progress", "num_workers", "save_every", "keep_checkpoints", "checkpoint_every",
              "keep_matmul_outputs", "loss_chunk_logits", "cache_image_features", "host_mmap_threshold"}


@dataclass
class RunConfig:
    """One training run, whole. ``key()`` is what a checkpoint is reused on (with the towers' and the
    records' fingerprints, and the stage-1 run a stage-2 run starts from)."""

    preset: str
    stage: str
    world: WorldSettings
    data: DataSettings
    model: ModelSettings
    train: TrainConfig
    evaluation: EvalSettings
    init_from: str | None = None        # stage 2: the key of the stage-1 run whose projector it starts from

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self), default=str))

    def key(self, backbones: str, records: str) -> str:
        """The fingerprint that names and validates this run's checkpoint."""
        config = self.to_dict()
        config.pop("evaluation")
        if self.stage == "stage1":  # it trains on the captions whatever stage 2 reads: one stage 1 for both
            for key in ("stage2_records", "drill_relation_steps", "drill_colour_steps", "drill_weights"):
                config["data"].pop(key)
        config["train"] = {k: v for k, v in config["train"].items() if k not in NOT_IN_KEY}
        return fingerprint({"config": config, "backbones": backbones, "records": records})

    def __str__(self) -> str:
        lines = [f"run config: preset {self.preset!r}, {self.stage}" + (f", from {self.init_from}" if self.init_from else "")]
        for section in ("world", "data", "model", "train", "evaluation"):
            values = asdict(getattr(self, section))
            shown = {k: v for k, v in values.items() if k != "chat_template" and not (section == "train" and k in NOT_IN_KEY)}
            lines.append(f"  {section:10} " + ", ".join(f"{k}={v}" for k, v in shown.items()))
        return "\n".join(lines)


def _stages(stage1: dict, lora: dict, qlora: dict | None = None) -> dict:
    return {"stage1": {"stage": 1, **stage1},
            "lora": {"stage": 2, **lora},
            "qlora": {"stage": 2, **lora, **(qlora or {}), "qlora": True}}


# Vicuna v1.1+ conversation format (lmsys/vicuna-7b-v1.5 ships no chat template): the system line,
# then "USER: ... ASSISTANT: ...</s>" turns, as LLaVA v1.5's "v1" conversation template writes them.
VICUNA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }} "
    "{% elif m['role'] == 'user' %}USER: {{ m['content'] }} "
    "{% else %}ASSISTANT: {{ m['content'] }}</s>{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the human's questions.")


# tiny: times measured on the 2-core CPU (scripts/bench_train.py).
TINY = Preset(
    name="tiny",
    model=ModelSettings(vision=str(DATA_DIR / "backbones" / "vision"), lm=str(DATA_DIR / "backbones" / "lm")),
    # 64 image tokens + up to 160 text tokens: keeps ~97% of the instruction records whole
    data=DataSettings(max_length=224),
    # Budget (design.md): the whole course within 6 minutes on a 2-core CPU. Step times on an idle 2-core
    # machine (the checkpoints' history.json; 2-4x slower when the CPU is shared): stage 1 batch 16
    # 0.28 s/step, LoRA 0.51 s/step, QLoRA 0.57 s/step. LoRA dropout off: it cost 15-100% of a step here
    # and a short run does not overfit. Learning rates are higher than the paper's: minutes, not epochs.
    # Stage 1 is where grounding starts: the caption loss levels off after ~20 steps, but held-out shape
    # answers went from 12% (50 steps) to 68% (300 steps). Stage 2 gives the projector the adapters'
    # learning rate for the same reason, and sees each conversation 4 times as often as a description:
    # the short grounded answers are what the evaluation asks for, and the 5-9x longer description and
    # reasoning answers would otherwise own most of the token-averaged loss.
    # Stage 1 caches the frozen tower's features (33 MB for 500 images; exact): 240 steps took 63.7 s instead
    # of 68.9 s, the same answers after; stage 2 showed no gain (69.9 vs 68.3 s). QLoRA: 30 steps, enough to see
    # its loss follow LoRA's in 20 s of the budget (its full 120 answered within a point of LoRA, README).
    stages=_stages(
        stage1=dict(max_steps=240, batch_size=16, lr=2e-3, cache_image_features=True),
        lora=dict(max_steps=120, batch_size=16, lr=1e-3, projector_lr=1e-3, lora_r=32, lora_alpha=64,
                  lora_dropout=0.0, type_repeats={"conversation": 4, "drill": 2}),
        qlora=dict(max_steps=30),
    ),
)

COLAB = Preset(
    name="colab",
    model=ModelSettings(vision="openai/clip-vit-base-patch16", lm="Qwen/Qwen2.5-0.5B-Instruct",
                        system_prompt="You are a helpful assistant."),  # else Qwen's template inserts its own
    data=DataSettings(source="files", max_length=1024,
                      stage1_file="instruct/coco_stage1_captions_train.json",  # course-style files for COCO 2017
                      instruct_file="instruct/coco_llava_instruct_train.json", image_folder="coco/val2017"),
    world=WorldSettings(sizes={"train": 2000, "test": 500}),  # from val2017: what `prepare --preset colab` fetches
    stages=_stages(
        stage1=dict(max_steps=500, batch_size=64, micro_batch_size=16, lr=1e-3, precision="auto"),
        lora=dict(max_steps=1000, batch_size=32, micro_batch_size=4, lr=2e-4, projector_lr=2e-5, lora_r=64,
                  lora_alpha=128, lora_dropout=0.05, gradient_checkpointing=True, precision="auto"),
    ),
)

PAPER = Preset(
    name="paper",
    model=ModelSettings(vision="openai/clip-vit-large-patch14-336", lm="lmsys/vicuna-7b-v1.5",
                        chat_template=VICUNA_TEMPLATE, system_prompt=VICUNA_SYSTEM),
    data=DataSettings(source="files", max_length=2048,
                      stage1_file="llava/blip_laion_cc_sbu_558k.json",  # v1.5 stage-1 captions (v1: CC3M-595K)
                      instruct_file="llava/llava_instruct_150k.json",   # the released LLaVA-Instruct (158K)
                      image_folder="coco/train2017"),
    stages=_stages(
        # v1.5: stage 1 lr 1e-3, batch 256, 1 epoch of 558K (~2,180 steps); stage 2 LoRA r=128 alpha=256,
        # lr 2e-4, projector lr 2e-5, batch 128, 1 epoch of 158K (~1,240 steps). Cosine, 3% warmup, no decay.
        stage1=dict(max_steps=2180, batch_size=256, micro_batch_size=16, lr=1e-3, gradient_checkpointing=True,
                    precision="auto"),
        lora=dict(max_steps=1240, batch_size=128, micro_batch_size=16, lr=2e-4, projector_lr=2e-5, lora_r=128,
                  lora_alpha=256, lora_dropout=0.05, gradient_checkpointing=True, precision="auto"),
        qlora=dict(micro_batch_size=8),
    ),
)

PRESETS = {p.name: p for p in (TINY, COLAB, PAPER)}
SECTIONS = ("world", "data", "model", "evaluation")


def get_preset(preset: str | Preset = "tiny", **changes) -> Preset:
    """A preset by name (or as given) with some settings changed, section by section:
    ``get_preset("tiny", world={"sizes": {...}}, model={"lm": "/folder"}, stages={...})``."""
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}: choose one of {sorted(PRESETS)}")
        preset = PRESETS[preset]
    for section in SECTIONS:
        if isinstance(changes.get(section), dict):
            changes[section] = replace(getattr(preset, section), **changes[section])
    return replace(preset, **changes) if changes else preset
