"""Cutting text boxes out of page images: ``data convert --from paddleocr-det --crop``.

A four-point box (PaddleOCR's order: top-left, top-right, bottom-right, bottom-left) is mapped onto
an upright rectangle as wide as its longer horizontal edge and as tall as its longer vertical edge,
so a slanted line comes out level; a polygon of more points (curved text) is cut as its bounding
rectangle. Points are clamped to the image. The crop keeps its orientation: a tall box stays tall
(PaddleOCR-VL reads vertical text; PaddleOCR's own recognizer would rotate it).
"""

from __future__ import annotations

import math
import os
from typing import Any


def load_image(path: str | os.PathLike):
    """The image as RGB with its EXIF orientation applied: the frame the box points were drawn in
    (PaddleOCR reads images with OpenCV, which applies the orientation too). Raises OSError (the
    path) or ValueError (not an image) with the reason in words."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from paddle_ocrvl_sft.io import open_named_file

    with open_named_file(path) as fh:
        try:
            with Image.open(fh) as im:
                im.load()
                return ImageOps.exif_transpose(im).convert("RGB")
        except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
            raise ValueError(f"not an image PIL can read ({exc})") from None
        except (SyntaxError, EOFError, OSError) as exc:  # PIL's ways of saying "truncated or corrupt"
            raise ValueError(f"the image does not decode ({exc})") from None


def box_points(points: Any) -> list[tuple[float, float]]:
    """``[[x, y], ...]`` (at least 4 points, finite numbers) as float pairs; ValueError otherwise."""
    if not isinstance(points, list) or len(points) < 4:
        raise ValueError(f"expected a list of at least 4 [x, y] points, got {points!r:.80}")
    pairs = []
    for point in points:
        if (not isinstance(point, (list, tuple)) or len(point) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in point)):
            raise ValueError(f"expected [x, y] numbers, got {point!r:.40}")
        pairs.append((float(point[0]), float(point[1])))
    return pairs


def cut_box(image, points: list[tuple[float, float]]):
    """The part of ``image`` inside the box (see the module docstring); ValueError for a box with
    no area inside the image."""
    from PIL import Image

    w, h = image.size
    pts = [(min(max(x, 0.0), w), min(max(y, 0.0), h)) for x, y in points]
    if len(pts) == 4:
        tl, tr, br, bl = pts
        width = round(max(math.dist(tl, tr), math.dist(bl, br)))
        height = round(max(math.dist(tl, bl), math.dist(tr, br)))
        if width < 1 or height < 1:
            raise ValueError(f"a box of {width}x{height} pixels inside the image: nothing to cut")
        # QUAD takes the source corners as upper-left, lower-left, lower-right, upper-right
        corners = (*tl, *bl, *br, *tr)
        return image.transform((width, height), Image.Transform.QUAD, corners, resample=Image.Resampling.BICUBIC)
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    left, top, right, bottom = math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys))
    if right - left < 1 or bottom - top < 1:
        raise ValueError(f"a box of {right - left}x{bottom - top} pixels inside the image: nothing to cut")
    return image.crop((left, top, right, bottom))
