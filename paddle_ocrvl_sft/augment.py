"""``plan --augment none|default``: whether the trainer's own random image augmentation runs, as data.

Both trainers augment training images by default with the same recipe (scale 0.5-1.5 with p 0.5,
90/270 degree rotation with p 0.1, white padding, colour jitter, JPEG re-compression; read in
PaddleFormers 1.2.0 ``datasets/template/mm_plugin.py`` ``PaddleOCRVLPlugin`` and ERNIEKit's
``data_processor/image_preprocessor/image_preprocessor_siglip.py``), but not with the same effect:

- PaddleFormers augments AFTER sizing the image and sizes the result again: a scaled or rotated
  image gets another number of image tokens than inference ever sends for that image.
- ERNIEKit fixes the token grid from the original image first (``predetermined_grid_thw``) and
  fits the augmented image into it: the image token count never changes (FACTS.md). It has no
  switch to turn augmentation off.

The default is ``none`` for PaddleFormers: training then sees exactly the image token counts
inference sends (the prompt agreement check compares them), as PaddleFormers' own
PaddleOCR-VL-1.5 recipe does (its template module switches augmentation off). ``default`` keeps
PaddleFormers' augmentation, a deliberate choice a user makes knowingly. ERNIEKit keeps its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from paddle_ocrvl_sft.errors import UserError

CHOICES = ("none", "default")
RECIPE = "scale 0.5-1.5 (p 0.5), 90/270 degree rotation (p 0.1), padding (p 0.1), colour jitter (p 0.1), JPEG (p 0.3)"


@dataclass(frozen=True)
class TrainerAugmentation:
    default: str  # what `plan` picks without --augment
    choices: tuple[str, ...]
    effect: str  # what the trainer's own augmentation does to what the model sees
    why_default: str
    refused: str = ""  # why a choice outside ``choices`` is refused


TRAINERS = {
    "paddleformers": TrainerAugmentation(
        "none", ("none", "default"),
        f"PaddleFormers' default augmentation ({RECIPE}) is applied after the image is sized, so scaled and rotated "
        "passes carry another image token count than inference sends",
        "none: training sees the image token counts inference sends (as PaddleFormers' own 1.5 recipe does)"),
    "erniekit": TrainerAugmentation(
        "default", ("default",),
        f"ERNIEKit's augmentation ({RECIPE}) is fitted into the image's own token grid: token counts never change",
        "default: ERNIEKit always augments (it has no switch) and keeps the token count",
        "ERNIEKit v1.4 always augments training images and has no switch to turn it off (its augmentation keeps the "
        "image token count); use --backend paddleformers for --augment none"),
}


def choose(backend: str, given: str | None) -> tuple[str, dict]:
    """The augmentation a plan trains with, and its plan.json record ("augment")."""
    trainer = TRAINERS[backend]
    if given is not None and given not in CHOICES:
        raise UserError(f"--augment {given}: choose {' or '.join(CHOICES)}")
    choice = trainer.default if given is None else given
    if choice not in trainer.choices:
        raise UserError(f"--augment {choice}: {trainer.refused}")
    return choice, {"choice": choice, "given": given, "plan_default": trainer.default, "effect": trainer.effect,
                    "why": trainer.why_default if given is None else f"--augment {given}"}


def plan_line(record: dict) -> str:
    """One line for `plan`'s output."""
    text = f"image augmentation: {record['choice']}"
    if record["choice"] == "none":
        return text + " (the trainer's own random augmentation is off: training images get inference's token counts)"
    return f"{text} (the trainer's own: {record['effect']})"
