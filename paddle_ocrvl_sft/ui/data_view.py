"""The Data page: a dataset opened with ``data validate``/``data stats`` and paged through sample by sample.

Opening a file runs :func:`paddle_ocrvl_sft.data.stats.dataset_stats` (one validation pass: every
problem, the counts, percentiles and the recommendation ``data stats`` prints) and keeps the result
while the file is unchanged. Samples are read back with the same reader (``io.iter_records``) and
shown as the trainer sees them (``sample_turns``: merged turns, images resolved against the
dataset's dir), each with its problems; the histogram is ``data stats``' own PNG.
"""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

from paddle_ocrvl_sft.errors import UserError

VALIDATE_MAX_SEQ_LEN = 16384  # `data validate`'s default
MAX_PROBLEMS = 50_000  # kept per opened file (the counts cover all)
MAX_OPEN = 8  # opened files kept in memory
RAW_CHARS = 20_000
THUMBNAIL = 1600  # longest side of a served image
MAX_IMAGE_PIXELS = 200_000_000


@dataclass
class Opened:
    path: Path
    key: tuple
    stats: object  # data.stats.DatasetStats
    problems: list = field(default_factory=list)  # data.validate.Problem, in file order
    truncated: bool = False
    release: str | None = None  # where the counts' release came from, as `data validate` prints it

    def matching(self, severity: str | None = None, rule: str | None = None) -> list:
        """The problems of ``severity`` and ``rule`` (None: any), in file order."""
        return [p for p in self.problems if (severity is None or p.severity == severity) and (rule is None or p.rule == rule)]

    def problem_lines(self, severity: str | None = None, rule: str | None = None) -> set[int]:
        return {p.line for p in self.matching(severity, rule)}


class Datasets:
    """Opened datasets, keyed by path and by what could change the answer (mtime, size, options)."""

    def __init__(self):
        self._opened: dict[tuple, Opened] = {}
        self._lock = threading.Lock()

    def open(self, path: Path, *, model_dir: Path | None = None, max_seq_len: int | None = None) -> Opened:
        """Validate and measure ``path`` (against ``max_seq_len``, default ``data validate``'s)."""
        from paddle_ocrvl_sft.data.stats import dataset_stats
        from paddle_ocrvl_sft.data.validate import check_dataset_paths, measure_options

        check_dataset_paths([path])
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size, str(model_dir) if model_dir else None, max_seq_len)
        with self._lock:
            if key in self._opened:
                return self._opened[key]
        tokenizer = model_dir if model_dir and (model_dir / "tokenizer.model").is_file() else None
        # as `data validate --model DIR`: the model's release (its marker, untrained-task) and pixel bounds
        _, release_line, options = measure_options(model=model_dir, max_seq_len=max_seq_len or VALIDATE_MAX_SEQ_LEN,
                                                   tokenizer=tokenizer)
        problems: list = []

        def on_problem(problem) -> None:
            if len(problems) < MAX_PROBLEMS:
                problems.append(problem)

        stats = dataset_stats([path], options, on_problem=on_problem)
        problems.sort(key=lambda p: p.line)  # duplicates are reported at the end of the pass
        opened = Opened(path, key, stats, problems, truncated=stats.report.errors + stats.report.warnings > len(problems),
                        release=release_line)
        with self._lock:
            for old in [k for k in self._opened if k[0] == key[0]]:
                del self._opened[old]
            while len(self._opened) >= MAX_OPEN:
                self._opened.pop(next(iter(self._opened)))
            self._opened[key] = opened
        return opened


def summary(opened: Opened, roots) -> dict:
    """The validation counts, problems by rule, the stats table and the recommendation."""
    from paddle_ocrvl_sft.data.stats import recommend

    stats = opened.stats
    report = stats.report
    return {
        "path": roots.shown(opened.path), "abs_path": str(opened.path),
        "validation": report.to_dict(), "summary": report.summary(),
        "kinds": dict(sorted(stats.kinds.items())), "percentiles": stats.percentiles(),
        "longest": [{"tokens": t, "line": line} for t, _path, line in stats.longest],
        "recommended": recommend(report.token_lengths).to_dict(),
        "problems_truncated": opened.truncated, "release": opened.release,
    }


def problems(opened: Opened, *, severity: str | None, rule: str | None, offset: int, limit: int) -> dict:
    chosen = opened.matching(severity, rule)
    return {"total": len(chosen), "offset": offset,
            "problems": [p.to_dict() | {"path": Path(p.path).name} for p in chosen[offset:offset + limit]]}


def _filter_lines(opened: Opened, show: str) -> set[int] | None:
    """Lines to page through for a filter: all (None), errors, warnings, any problem, one rule or one line."""
    if show == "all":
        return None
    if show in ("error", "warning"):
        return opened.problem_lines(severity=show)
    if show == "problems":
        return opened.problem_lines()
    if show.startswith("rule:"):
        return opened.problem_lines(rule=show[5:])
    if show.startswith("line:") and show[5:].isdigit():
        return {int(show[5:])}
    raise UserError(f"show={show}: expected all, error, warning, problems, rule:NAME or line:N")


def samples(opened: Opened, *, show: str = "all", offset: int = 0, limit: int = 10) -> dict:
    """A page of samples (``offset``/``limit`` over the ones ``show`` selects), each as the trainer reads it."""
    from paddle_ocrvl_sft.io import iter_records

    lines = _filter_lines(opened, show)
    total = opened.stats.report.samples if lines is None else len(lines)
    by_line: dict[int, list] = {}
    for p in opened.problems:
        by_line.setdefault(p.line, []).append(p.to_dict())
    records = iter_records(opened.path)
    if lines is not None:
        records = (r for r in records if r.line in lines)
    page = [sample_view(r, opened.path, by_line.get(r.line, [])) for r in islice(records, offset, offset + limit)]
    return {"total": total, "offset": offset, "samples": page}


def sample_view(record, dataset: Path, found: list[dict]) -> dict:
    from paddle_ocrvl_sft.data.sample import is_remote, resolve_image, sample_turns
    from paddle_ocrvl_sft.prompts import prompt_kind

    view = {"line": record.line, "problems": found, "raw": None, "images": [], "turns": None, "kind": None, "kie": None}
    if record.error is not None or not isinstance(record.value, dict):
        view["raw"] = (record.error or "") + ("" if record.value is None else "\n" + _raw(record.value))
        return view
    sample = record.value
    view["raw"] = _raw(sample)
    infos = sample.get("image_info")
    for i, info in enumerate(infos if isinstance(infos, list) else []):  # malformed: the validator says why
        url = info.get("image_url") if isinstance(info, dict) else None
        if isinstance(url, str) and url:
            local = not is_remote(url) and not url.startswith("data:")
            resolved = resolve_image(url, dataset) if local else None
            view["images"].append({"index": i, "url": url[:300], "local": local,
                                   "exists": bool(resolved and resolved.is_file()),
                                   "resolved": str(resolved) if resolved else None})
    try:
        turns = sample_turns(sample)
    except (KeyError, TypeError, IndexError, AttributeError):
        return view  # malformed: the raw JSON and the problems say why
    if not all(isinstance(text, str) for turn in turns for text in turn):
        return view  # a "text" that is not a string (5, ["x"]): the validator reports the row
    view["turns"] = [{"prompt": p, "answer": a} for p, a in turns]
    if turns:
        view["kind"] = prompt_kind(turns[0][0])
        if view["kind"] == "kie":
            view["kie"] = kie_fields(turns[0][0], turns[0][1])
    return view


def _raw(value) -> str:
    text = json.dumps(value, ensure_ascii=False, indent=1)
    return text if len(text) <= RAW_CHARS else text[:RAW_CHARS] + " …"


def leaves(value, path: str = "") -> list[tuple[str, object]]:
    """(path, leaf) pairs of a JSON value, paths as eval names them (``ITEMS[1].NAME``)."""
    if isinstance(value, dict) and value:
        return [pair for k, v in value.items() for pair in leaves(v, f"{path}.{k}" if path else str(k))]
    if isinstance(value, list) and value:
        return [pair for i, v in enumerate(value) for pair in leaves(v, f"{path}[{i}]")]
    return [(path, value)]


def kie_fields(prompt: str, answer: str) -> dict:
    """A KIE sample's fields: what the prompt asks, the answer's values, asked-but-absent and unasked keys."""
    from paddle_ocrvl_sft.evaluate.metrics import leaf_text
    from paddle_ocrvl_sft.prompts import KIE_PREFIX

    query = json.loads(prompt[len(KIE_PREFIX):])
    try:
        target = json.loads(answer)
    except ValueError as exc:
        return {"asked": list(query), "fields": [], "error": f"the answer is not JSON: {exc}"}
    if not isinstance(target, dict):
        return {"asked": list(query), "fields": [], "error": "the answer is not a JSON object"}
    asked = list(query)
    return {"asked": asked, "error": None,
            "fields": [{"path": p, "value": leaf_text(v)} for p, v in leaves(target)],
            "missing": [k for k in asked if k not in target] if asked else [],
            "unasked": [k for k in target if k not in query] if asked else []}


def record_at(path: Path, line: int):
    from paddle_ocrvl_sft.io import iter_records

    for record in iter_records(path):
        if record.line == line:
            return record
        if record.line > line:
            break
    raise UserError(f"{path}:{line}: no sample starts on this line")


def image_png(file: Path, roots) -> bytes:
    """An image under the UI's roots, decoded and re-encoded (bounded in pixels): never the raw file."""
    from PIL import Image

    if not roots.inside(file):
        raise PermissionError(f"{file}: outside the UI's workdir and --allow dirs")
    try:
        with Image.open(file) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise UserError(f"{file.name}: {img.width}x{img.height} is too large to show")
            img.draft("RGB", (THUMBNAIL, THUMBNAIL))  # JPEG: decode at a reduced scale
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buf = io.BytesIO()
            img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") else "RGB").save(buf, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"{file.name}: cannot be shown ({exc})") from None
    return buf.getvalue()


def stats_png(opened: Opened) -> bytes:
    """``data stats``' histogram (token lengths and image sizes) for the opened file: the line is the
    given max_seq_len, else the recommended one (as ``data stats`` draws it)."""
    import tempfile

    from paddle_ocrvl_sft.data.stats import plot_histogram

    if not opened.stats.samples:
        raise UserError(f"{opened.path}: no valid sample to plot")
    with tempfile.TemporaryDirectory(prefix="paddle-ocrvl-sft-ui-") as tmp:
        out = plot_histogram(opened.stats, Path(tmp) / "stats.png", max_seq_len=opened.key[4], force=True)
        return out.read_bytes()
