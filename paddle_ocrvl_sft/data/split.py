"""``data split``: a deterministic train/validation split, grouped by image, stratified by prompt kind.

Every sample that shares an image with another lands on the same side (KIE datasets hold ~10
prompts per image: splitting them apart would leak the validation images into training). Within
each prompt kind, whole image groups are drawn for validation until that kind's share is reached.
With few images or big groups that can leave a side empty or far from the asked fraction: the
split is then refused with the reason (a far one is written with ``allow_uneven``).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from paddle_ocrvl_sft.data.sample import image_location, image_urls, relocate_image, sample_turns
from paddle_ocrvl_sft.data.validate import check_dataset_paths
from paddle_ocrvl_sft.errors import UserError
from paddle_ocrvl_sft.io import atomic_open, iter_records, refuse_existing, refuse_inputs_as_outputs, write_json_line
from paddle_ocrvl_sft.prompts import prompt_kind


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclass
class SplitResult:
    train: int = 0
    val: int = 0
    val_by_kind: dict[str, int] = field(default_factory=dict)
    train_by_kind: dict[str, int] = field(default_factory=dict)
    uneven: str | None = None  # why the sides are far from the asked fraction (written with allow_uneven)


def assign_validation(groups: list[str], kinds: list[str], val_fraction: float, seed: int) -> set[str]:
    """The image groups that go to validation: per kind, shuffled groups until the kind's share.

    ``groups[i]``/``kinds[i]`` describe sample i. A group counts toward the kind of its first
    sample. Pure and deterministic for a given input and seed.
    """
    size: dict[str, int] = {}
    group_kind: dict[str, str] = {}
    for g, k in zip(groups, kinds):
        size[g] = size.get(g, 0) + 1
        group_kind.setdefault(g, k)
    per_kind: dict[str, list[str]] = {}
    for g in sorted(size):
        per_kind.setdefault(group_kind[g], []).append(g)
    chosen: set[str] = set()
    for kind in sorted(per_kind):
        candidates = per_kind[kind]
        random.Random(f"{seed}:{kind}").shuffle(candidates)
        # at least one group per kind while the kind has two: a small kind still gets validated
        target = max(1 if len(candidates) > 1 else 0, round(val_fraction * sum(size[g] for g in candidates)))
        taken = 0
        for g in candidates:
            if taken >= target:
                break
            chosen.add(g)
            taken += size[g]
    return chosen


def uneven_split(group_sizes: Counter, val_samples: int, val_fraction: float) -> str | None:
    """Why a split is unusable, in words: a side is empty, or a side holds less than half or more
    than twice its asked share. None when it is fine."""
    total = sum(group_sizes.values())
    train_samples = total - val_samples
    if train_samples and val_samples and all(
        0.5 <= (got / total) / asked <= 2 for got, asked in ((val_samples, val_fraction), (train_samples, 1 - val_fraction))
    ):
        return None
    if not train_samples or not val_samples:
        what = f"the {'train' if not train_samples else 'validation'} side would be empty"
    else:
        what = f"validation would get {val_samples} of {total} samples ({val_samples / total:.0%}) for the {val_fraction:.0%} asked"
    return (f"{what}: samples that share an image stay on one side, and the {total} samples share "
            f"{len(group_sizes)} image(s), the largest group holding {max(group_sizes.values())}")


def split_dataset(
    source: str | os.PathLike,
    out_train: str | os.PathLike,
    out_val: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    force: bool = False,
    allow_uneven: bool = False,
) -> SplitResult:
    """Two streaming passes: collect (image group, kind) per sample, then write both sides.

    Nothing is written when a side would be empty, or (without ``allow_uneven``) far from the
    asked fraction: see :func:`uneven_split`.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val {val_fraction}: must be between 0 and 1 (a fraction of the samples)")
    (source,) = check_dataset_paths([source])
    out_train, out_val = Path(out_train), Path(out_val)
    refuse_inputs_as_outputs([source], [out_train, out_val])
    refuse_existing(out_train, out_val, force=force)

    union = _UnionFind()
    first_image: list[str] = []
    kinds: list[str] = []
    for record in iter_records(source):
        try:
            if record.error:
                raise ValueError(record.error)
            urls = [image_location(u, source) for u in image_urls(record.value)]
            kinds.append(prompt_kind(sample_turns(record.value)[0][0]))
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise UserError(f"{record.where}: not a valid sample ({exc}); run `data validate --write-clean` first") from None
        key = urls[0] if urls else f"{record.where}"  # no image: a group of its own
        for other in urls[1:]:
            union.union(key, other)
        first_image.append(key)
    if not kinds:
        raise UserError(f"{source}: no samples to split")
    groups = [union.find(k) for k in first_image]
    val_groups = assign_validation(groups, kinds, val_fraction, seed)
    sizes = Counter(groups)
    uneven = uneven_split(sizes, sum(sizes[g] for g in val_groups), val_fraction)
    if uneven and (not allow_uneven or len(val_groups) in (0, len(sizes))):
        fix = "add images" if len(sizes) < 2 else "try another --val or --seed" + ("" if allow_uneven else ", or pass --allow-uneven")
        raise UserError(f"{source}: not split: {uneven}; {fix}. Nothing was written.")

    result = SplitResult(uneven=uneven)
    with atomic_open(out_train) as train_fh, atomic_open(out_val) as val_fh:
        for i, record in enumerate(iter_records(source)):
            is_val = groups[i] in val_groups
            out = out_val if is_val else out_train
            sample = record.value
            for info in sample["image_info"]:
                info["image_url"] = relocate_image(info["image_url"], source, out)
            write_json_line(val_fh if is_val else train_fh, sample)
            side = result.val_by_kind if is_val else result.train_by_kind
            side[kinds[i]] = side.get(kinds[i], 0) + 1
            if is_val:
                result.val += 1
            else:
                result.train += 1
    return result
