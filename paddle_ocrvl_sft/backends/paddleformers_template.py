"""The chat template a PaddleFormers plan trains with: the release's, registered from a module in the plan dir.

PaddleFormers 1.2's built-in ``paddleocr_vl`` template is the first release's: it ends the user
turn with ``"\\nAssistant: "``. PaddleOCR-VL-1.5 and 1.6 end it with ``"\\nAssistant:\\n"``
(shared/reference/MODEL_VERSIONS.md). PaddleFormers' own 1.5 recipe therefore registers a template
of its own: ``template_backend: custom``, ``template: <name>`` and ``custom_register_path: <a .py
file>``, which PaddleFormers' argument parser executes before it parses the config
(``paddleformers/cli/hparams/parser.py`` ``_load_custom_template``), in every training process.

A plan does the same for every release: it writes :data:`MODULE` into PLAN_DIR, which registers
``paddle_ocrvl_sft_<release>``: the built-in ``paddleocr_vl`` template with the release's end of
the user turn, and PaddleFormers' own ``PaddleOCRVLPlugin`` for the image, with its random image
augmentation kept (``plan --augment default``) or switched off (``--augment none``). The module
imports only PaddleFormers: the plan dir trains on any machine with PaddleFormers installed.
"""

from __future__ import annotations

from pathlib import Path

from paddle_ocrvl_sft import releases

MODULE = "paddleocr_vl_template.py"
BUILTIN = "paddleocr_vl"  # PaddleFormers 1.2's template (v1 markers)
AUGMENT_CHOICES = ("none", "default")


def template_name(release: str) -> str:
    """``paddle_ocrvl_sft_v1_5`` for v1.5: a name no PaddleFormers template has."""
    return "paddle_ocrvl_sft_" + release.replace(".", "_")


TEMPLATE_NAMES = tuple(template_name(r) for r in releases.NAMES)


def config_keys(module_path: str | Path, release: str) -> dict:
    """The config keys that make PaddleFormers train with the release's template."""
    return {"template_backend": "custom", "template": template_name(release), "custom_register_path": str(module_path)}


_SOURCE = '''\
"""{title} chat template for PaddleFormers' VL-SFT, written by `paddle-ocrvl-sft plan` (docs/releases.md).

config.yaml loads this file through `custom_register_path` (template_backend: custom), the way
PaddleFormers' official PaddleOCR-VL-1.5 recipe registers its own template. It registers
{name!r}: PaddleFormers' built-in `paddleocr_vl` template with {title}'s end of the
user turn, {marker!r}, and PaddleFormers' own PaddleOCRVLPlugin for the image, {augment_text}.
The plan's prompt agreement check built a training sample with this module and found its token
ids equal to the prompt PaddleX sends the model at inference.
"""

from paddleformers.datasets.template.formatter import StringFormatter
from paddleformers.datasets.template.mm_plugin import PLUGINS, PaddleOCRVLPlugin, get_mm_plugin, register_mm_plugin
from paddleformers.datasets.template.template import TEMPLATES, register_template

NAME = {name!r}
RELEASE = {release!r}
ASSISTANT_MARKER = {marker!r}
AUGMENT = {augment!r}  # plan --augment: "none" or "default" (PaddleFormers' own random augmentation)


class ReleasePlugin(PaddleOCRVLPlugin):
    """PaddleFormers' PaddleOCR-VL plugin; AUGMENT "none": images reach the model as inference sends them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if AUGMENT == "none":
            self.image_augmentation = unchanged


def unchanged(image):
    return image


# idempotent: a second load in the same process (the parser runs per process) must not fail
if NAME not in PLUGINS:
    register_mm_plugin(NAME, ReleasePlugin)
if NAME not in TEMPLATES:
    builtin = TEMPLATES["paddleocr_vl"]
    register_template(
        name=NAME,
        format_user=StringFormatter(slots=["User: {{{{content}}}}" + ASSISTANT_MARKER]),
        format_assistant=builtin.format_assistant,
        format_system=builtin.format_system,
        format_prefix=builtin.format_prefix,
        chat_sep=builtin.chat_sep,
        mm_plugin=get_mm_plugin(name=NAME, image_token=builtin.mm_plugin.image_token),
    )
'''

_AUGMENT_TEXT = {
    "none": "with its random image augmentation switched off (plan --augment none)",
    "default": "with its random image augmentation (plan --augment default: scale 0.5-1.5, 90/270 degree "
               "rotation, padding, colour jitter, JPEG; the scale and rotation change the image token count)",
}


def module_source(release: str, title: str, marker: str, augment: str) -> str:
    """The text of :data:`MODULE` for one release and augmentation choice."""
    if augment not in AUGMENT_CHOICES:
        raise ValueError(f"augment must be one of {AUGMENT_CHOICES}, not {augment!r}")
    return _SOURCE.format(title=title, name=template_name(release), release=release, marker=marker, augment=augment,
                          augment_text=_AUGMENT_TEXT[augment])


def write_module(path: Path, release: str, augment: str) -> str:
    """Write the template module for ``release``; returns the plan note."""
    from paddle_ocrvl_sft import releases
    from paddle_ocrvl_sft.io import atomic_write_text

    info = releases.get(release)
    atomic_write_text(path, module_source(info.name, info.title, info.assistant_marker, augment))
    return (f"template: {path.name} registers {template_name(info.name)} ({info.title}: user turn ends with "
            f"{releases.shown(info.assistant_marker)!r}; image augmentation {augment})")
