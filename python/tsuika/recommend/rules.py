"""Every rule ``tsuika recommend`` follows, as data. Each rule carries the reason it prints.

The method table follows the purpose guide the project builds on:

- a character or a person: LoRA, or DreamBooth with 10-20 pictures when a whole
  model is wanted;
- a style or an atmosphere: Hypernetwork with hundreds of pictures or more,
  Textual Inversion or LoRA with few;
- a new concept or object: Textual Inversion with 3-5 pictures, LoRA with more;
- a pose or a composition: LoRA;
- combining methods gives finer control.

Numbers for full-size models (UNet width 320) are the usual community values:
kohya-ss/sd-scripts' LoRA defaults (lr 1e-4), AUTOMATIC1111's embedding (5e-3) and
hypernetwork (1e-5) rates. DreamBooth is named in the reasons (a whole model)
but never chosen: a LoRA gives the same subject in a small file. Narrow models (width < 320, e.g. the tiny world's 32) use the rates that
``benches/quality.py`` measured on the tiny world: with Adam, the step a narrow
layer tolerates grows as its width shrinks (muP, Yang et al. 2021).

Nothing else in the package decides; :mod:`tsuika.recommend.decide` only looks
rows up here.
"""

from __future__ import annotations

from dataclasses import dataclass

PURPOSES = ("character", "person", "style", "concept", "object", "pose")
NARROW_WIDTH = 320  # UNet first-block width of every SD family


@dataclass(frozen=True)
class Family:
    """A model family: native resolution, memory use relative to SD 1.x, trainable today.

    ``frozen_text_below``: with less ``--vram`` (GiB) than this, a LoRA leaves the
    text encoder(s) frozen so that their states are cached instead of trained.
    """

    resolution: int
    memory_factor: float
    trainable: bool
    reason: str
    frozen_text_below: float | None = None
    frozen_text_reason: str = ""


# SDXL: 1024 px and a UNet of 2.6 billion parameters (SD 1.x: 860 million); kohya's
# SDXL LoRA fits in 12 GiB only with gradient checkpointing, --network_train_unet_only
# and --cache_text_encoder_outputs (sd-scripts docs/train_SDXL-en.md), about three
# times what an SD 1.x LoRA needs.
FAMILIES = {
    "sd1": Family(512, 1.0, True, "SD 1.x family (CLIP ViT-L text encoder)"),
    "sd2": Family(768, 1.6, True, "SD 2.x family (OpenCLIP ViT-H text encoder, 768 px)"),
    "sdxl": Family(
        1024, 3.0, True, "SDXL family (two text encoders, 1024 px)", 24.0,
        "under 24 GiB an SDXL LoRA trains the UNet only: both text encoders stay frozen "
        "and their states are cached (kohya's --network_train_unet_only with "
        "--cache_text_encoder_outputs)",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class MethodRule:
    """Use ``method`` for ``purpose`` when the unique pictures are in [low, high]."""

    purpose: str
    low: int
    high: int | None
    method: str
    reason: str


METHOD_RULES = (
    MethodRule("character", 1, None, "lora", "a character: LoRA learns a subject from a few dozen "
               "pictures and stays a small file (DreamBooth with 10-20 pictures only when a whole "
               "model is wanted)"),
    MethodRule("person", 1, None, "lora", "a person: LoRA learns a face from a few dozen pictures "
               "(DreamBooth with 10-20 pictures only when a whole model is wanted)"),
    MethodRule("style", 1, 9, "textual_inversion", "a style from few pictures: Textual Inversion "
               "captures it in one new word without changing the model"),
    MethodRule("style", 10, 99, "lora", "a style from tens of pictures: LoRA learns it (a "
               "Hypernetwork wants hundreds)"),
    MethodRule("style", 100, None, "hypernetwork", "a style from hundreds of pictures: a "
               "Hypernetwork shifts every attention towards it and is used at any strength"),
    MethodRule("concept", 1, 5, "textual_inversion", "a new concept from 3-5 pictures: Textual "
               "Inversion finds the word for it without changing the model"),
    MethodRule("concept", 6, None, "lora", "a new concept from more than 5 pictures: LoRA learns "
               "more detail than one word can hold"),
    MethodRule("object", 1, 5, "textual_inversion", "an object from 3-5 pictures: Textual "
               "Inversion finds the word for it without changing the model"),
    MethodRule("object", 6, None, "lora", "an object from more than 5 pictures: LoRA learns more "
               "detail than one word can hold"),
    MethodRule("pose", 1, None, "lora", "a pose or composition: LoRA changes the layout the UNet "
               "draws, which a word (Textual Inversion) cannot"),
)  # fmt: skip


@dataclass(frozen=True)
class SizeRule:
    """Unique pictures a method wants: a warning below ``low`` or above ``high``."""

    low: int
    high: int | None
    too_few: str
    too_many: str


SIZE_RULES = {
    "textual_inversion": SizeRule(3, 30, "Textual Inversion wants 3-5 varied pictures; with fewer "
                                  "the word copies them", "more pictures than one word can hold; "
                                  "a LoRA would learn more from them"),
    "lora": SizeRule(5, 2000, "LoRA learns little from fewer than 5 pictures and copies them; add "
                     "pictures (or use Textual Inversion)", "a large set for LoRA: raise the rank, "
                     "or train a Hypernetwork or a full fine-tune"),
    "hypernetwork": SizeRule(100, None, "a Hypernetwork wants hundreds of pictures", ""),
}  # fmt: skip


@dataclass(frozen=True)
class StepRule:
    """Steps = ``views`` per picture (x repeats) / batch size, within [``low``, ``high``]."""

    views: int
    low: int
    high: int
    reason: str


# LoRA's floor was 400 steps. On the tiny world (benches/quality.py --recommended)
# that gave the 15-picture character LoRA 2.5x its 100 views per picture, and
# its prior fell to 0.50 (DreamBooth's fixed recipe: 0.67); at 150-200 steps the
# same run already drew the heart in half its pictures.
# Steps are rounded up to whole hundreds, so that the four checkpoints
# (save_every = steps / 4) fall on round steps. On the tiny world a 30-picture
# LoRA of 375 steps (100 views x 30 / 8) scored fidelity 0.25 and its 400-step
# twin 0.50: neighbouring checkpoints differ by up to 0.25 over 8 pictures, so
# the measure cannot tell 375 from 400 steps, and rounding up costs nothing.
STEP_ROUND = 100
STEP_ROUND_REASON = "rounded up to whole hundreds"
STEP_RULES = {
    "textual_inversion": StepRule(100, 400, 3000, "about 100 views per picture; at least 400 "
                                  "steps, since one vector learns slowly"),
    "lora": StepRule(100, 200, 4000, "about 100 views per picture (kohya's usual 10 repeats x "
                     "10 epochs); at least 200 steps, where the tiny world's LoRA shows the "
                     "concept"),
    "hypernetwork": StepRule(20, 400, 10000, "about 20 views per picture: a large set needs "
                             "few passes"),
}  # fmt: skip


@dataclass(frozen=True)
class RateRule:
    """Learning rate of a method: for full-size models and for narrow ones."""

    full: float
    narrow: float
    reason: str


RATE_RULES = {
    "lora": RateRule(1e-4, 2e-3, "LoRA: kohya's 1e-4 for full-size models"),
    "textual_inversion": RateRule(5e-3, 5e-3, "an embedding: AUTOMATIC1111's 5e-3 (the word's "
                                  "vector does not depend on the UNet's width)"),
    "hypernetwork": RateRule(1e-5, 1e-3, "Hypernetwork: AUTOMATIC1111's usual 1e-5 for "
                             "full-size models"),
}  # fmt: skip
NARROW_RATE_REASON = "narrow model (UNet width {width} < 320): the rate measured on the tiny world"
# Full-size rates of a family that differ from RATE_RULES' (narrow models keep the
# rates measured on the tiny world). SDXL's UNet is three times SD 1.x's, with
# wider attentions: published kohya SDXL LoRA runs use 4e-5..1e-4 for the UNet
# (sd-scripts' SDXL examples, Replicate's train-sdxl-kohya default 6e-5). Textual
# Inversion and Hypernetworks have no published SDXL rate of their own: SD's stay.
FAMILY_RATES: dict[tuple[str, str], tuple[float, str]] = {
    ("sdxl", "lora"): (6e-5, "an SDXL LoRA: 6e-5, the middle of the 4e-5..1e-4 that kohya SDXL "
                             "runs use (a larger UNet than SD 1.x's takes a smaller step)"),
}  # fmt: skip


@dataclass(frozen=True)
class PurposeRule:
    """Per-purpose choices: LoRA rank, whether the text encoder trains, augmentations."""

    rank: int
    rank_reason: str
    train_text_encoder: bool
    text_reason: str
    flip: bool
    flip_reason: str
    color_jitter: float
    jitter_reason: str
    ti_template: str


_NO_FLIP = "no flip: a mirrored picture would teach the wrong side of asymmetric details"
PURPOSE_RULES = {
    "character": PurposeRule(16, "rank 16: enough for a face, outfit and details", True,
                             "the identifier must come to mean the character", False, _NO_FLIP,
                             0.0, "colour jitter off: colours are part of who it is", "object"),
    "person": PurposeRule(16, "rank 16: enough for a face and its expressions", True,
                          "the identifier must come to mean the person", False, _NO_FLIP,
                          0.0, "colour jitter off: skin and hair colours identify the person",
                          "object"),
    "style": PurposeRule(32, "rank 32: a style touches everything the model draws", False,
                         "a style lives in the UNet; the frozen text encoder lets text be cached",
                         True, "flip on: a style looks the same mirrored, and it doubles the data",
                         0.0, "colour jitter off: colours are part of the style", "style"),
    "concept": PurposeRule(8, "rank 8: one new thing needs little capacity", True,
                           "the identifier must come to mean the concept", False, _NO_FLIP,
                           0.0, "colour jitter off: the pictures' colours are kept", "object"),
    "object": PurposeRule(8, "rank 8: one object needs little capacity", True,
                          "the identifier must come to mean the object", False, _NO_FLIP,
                          0.0, "colour jitter off: the object's colours are kept", "object"),
    "pose": PurposeRule(16, "rank 16: a layout spans the whole picture", False,
                        "a pose lives in the UNet; the frozen text encoder lets text be cached",
                        False, "no flip: left and right are part of a pose", 0.1,
                        "colour jitter 0.1: a pose LoRA should not learn its pictures' colours",
                        "object"),
}  # fmt: skip
NARROW_RANK_REASON = "at most width/4 = {cap} for a UNet of width {width}"
DEFAULT_INITIALIZER = {"character": "person", "person": "person", "style": "style",
                       "concept": "object", "object": "object", "pose": "person"}  # fmt: skip


# Method options that do not depend on the data: key -> (value, reason).
METHOD_CONSTANTS: dict[str, dict[str, tuple[object, str]]] = {
    "lora": {},
    "textual_inversion": {
        "num_vectors": (1, "one vector: with few pictures more vectors overfit"),
    },
    "hypernetwork": {
        "dims": ("auto", "every context width this model's attentions have"),
        "layer_structure": ([1, 2, 1], "AUTOMATIC1111's default 1, 2, 1"),
    },
}


@dataclass(frozen=True)
class MemoryRule:
    """For at least ``gb`` GiB (scaled by the family's memory factor): batch and savings."""

    gb: float
    batch_size: int
    gradient_checkpointing: bool
    reason: str


MEMORY_RULES = (  # first match from the top
    MemoryRule(24, 8, False, "24 GiB or more: batch 8 fits without gradient checkpointing"),
    MemoryRule(16, 4, False, "16-24 GiB: batch 4 fits without gradient checkpointing"),
    MemoryRule(10, 2, True, "10-16 GiB: batch 2 with gradient checkpointing"),
    MemoryRule(0, 1, True, "under 10 GiB: batch 1 with gradient checkpointing"),
)
NO_GPU_BATCH = MemoryRule(0, 1, False, "no --vram: batch 1, as a CPU trains")
NARROW_BATCH = MemoryRule(0, 8, False, "a narrow model fits any memory: batch 8")
MIXED_PRECISION = {  # --vram given -> value, reason
    False: ("no", "no --vram: full precision (a CPU gains nothing from fp16)"),
    True: ("fp16", "fp16 halves activation memory on a GPU (use bf16 on Ampere or newer)"),
}


@dataclass(frozen=True)
class ValidationRule:
    """Hold out ``split`` with early stopping from ``min_images`` unique pictures on."""

    min_images: int
    split: float
    patience: int
    timesteps: int  # fixed timesteps per held-out picture
    evaluations: int  # validations over the run
    smoothing: float  # EMA weight of the past validation values
    min_share: float  # no early stop, no best, before this share of the run's steps
    on_reason: str
    patience_reason: str
    timesteps_reason: str
    smoothing_reason: str
    min_steps_reason: str
    off_reason: str


# Patience and timesteps were first 3 and 4 (the config's defaults). On the tiny
# world (benches/quality.py --recommended) that stopped the 30-picture LoRA at
# step 240 with its best validation loss at step 120, while the share of
# pictures that showed the concept still grew (0.12 at 100, 0.25 at 200): the
# loss over 3 held-out pictures x 4 timesteps is too noisy to stop on so soon.
# With patience 5 and 16 timesteps the run went on to its last step, so the 3
# held-out pictures bought nothing, and the LoRA trained on the other 27 drew
# the heart in 0.31 of its pictures against the fixed recipe's 0.50 on all 30.
# Hence a split only from 50 pictures on, where 10% is 5 pictures or more.
# Smoothing and the start: benches/quality.py replays early-stopping rules over
# whole runs (4 methods x 2 seeds, 32 pictures per checkpoint). The raw loss
# kept a step up to 0.34 below the best checkpoint's fidelity (a DreamBooth
# whose loss is lowest at its first evaluation, a LoRA's lucky early dip); an
# EMA of weight 0.7 that starts at a quarter of the run lost at most 0.12.
VALIDATION = ValidationRule(
    50, 0.1, 5, 16, 10, 0.7, 0.25,
    "10% held out for a validation loss; the best step is also written as NAME-best",
    "stop after 5 validations (half the run) without improvement: a loss over a few "
    "held-out pictures is noisy, and 3 stopped a LoRA before it had learned (tiny world)",
    "16 timesteps per held-out picture (default 4) steady the loss over few pictures",
    "early stopping follows a moving average of the loss (weight 0.7 on the past): one "
    "lucky evaluation does not pick the best step (tiny world: worst miss 0.34 -> 0.12)",
    "no step before a quarter of the run is kept or stops it: a DreamBooth's loss was "
    "lowest at its first evaluation, before the concept was learned (tiny world)",
    "fewer than 50 pictures: none can be spared for validation (the 3 of 30 that a split "
    "holds out cost a tiny-world LoRA more than its early stopping gave), so early stopping "
    "is off",
)  # fmt: skip


@dataclass(frozen=True)
class Combination:
    """Methods used together, when it helps, and how to generate with them."""

    purposes: tuple[str, ...]
    min_images: int
    methods: tuple[str, ...]
    weights: tuple[float, ...]
    reason: str


COMBINATIONS = (
    Combination(("character", "person", "object", "concept"), 10,
                ("textual_inversion", "lora"), (1.0, 0.8),
                "LoRA + Textual Inversion (pivotal tuning): the embedding carries the subject "
                "in one word, so the LoRA can run at 0.8 and leave prompts more freedom"),
    Combination(("pose",), 1, ("lora", "lora"), (0.6, 0.8),
                "several LoRAs: this pose LoRA at 0.6 with a character LoRA at 0.8 puts that "
                "character in the pose without the pose LoRA overriding its look"),
    Combination(("style",), 10, ("lora", "lora"), (0.6, 0.8),
                "several LoRAs: this style at 0.5-0.7 with a subject LoRA at 0.8 draws the "
                "subject in the style; above 0.7 the style starts to change the subject"),
)  # fmt: skip


DUPLICATE_SHARE = 0.2  # above this share of near-duplicates, say so
PROBLEMS = {
    "duplicates": "{dups} of {images} pictures are near-duplicates of others ({share:.0%}); "
                  "they count once, so the set has {unique} pictures",
    "only_duplicates": "every picture repeats the first one: the set has one picture",
    "small": "{small} of {unique} pictures have a shorter side below the resolution {res}; "
             "they will be enlarged (and blurred)",
    "single_buckets": "{n} bucket(s) hold a single picture (mixed aspect ratios): those "
                      "batches are batches of one; crop them to common ratios",
    "no_captions": "no caption files: every picture trains on its folder's class tokens only",
    "identifier_missing": "the identifier {identifier!r} is in {n} of {captioned} captions; put "
                          "it in every caption so that it comes to mean the subject",
    "no_identifier": "no identifier found in the captions; pass --identifier WORD",
    "unreadable": "{n} picture(s) cannot be read and are left out (first: {first})",
}  # fmt: skip
