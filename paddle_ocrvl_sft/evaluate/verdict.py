"""The verdict at the end of ``train``: is the fine-tune better on the task without forgetting?

One table — the task's headline metric per prompt kind, base -> fine-tuned (the plan's eval data);
the drift from the base on general pages per task, against the limit (the plan's ``--general``
and ``--max-drift``, docs/eval.md); the runaway answers of each model — and one line:

* the task part: ``better`` when every kind's headline metric improved or held and one improved,
  ``worse`` when one got worse, ``same`` otherwise;
* the drift part: ``within`` the limit on every task, or ``forgot`` (one task drifted past it);
* the runaway part: more answers at the token cap or ending in a loop than the base gave.

``train`` prints it and stores it as ``"verdict"`` in the run's ``record.json`` (and
``eval/verdict.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

from paddle_ocrvl_sft.evaluate.score import (ALL_TASKS, HARMFUL_RUNAWAYS, drift_limit, format_change, format_value,
                                             headlines, kinds_of)

# the verdict's limit when the plan sets none (eval --general gates only when asked)
DEFAULT_MAX_DRIFT = {ALL_TASKS: 0.1}
CPU_TOKEN_CAP = 128  # general pages on a CPU run without eval data: a cap that keeps the drift check minutes long


def task_rows(metrics: dict) -> list[dict]:
    """The headline metric of each prompt kind, base and fine-tuned, and whether it got better."""
    base = metrics.get("baseline") or {}
    rows = []
    for kind in kinds_of(metrics):
        key, label, higher = headlines(kind)[0]
        now, before = metrics[kind][key], base.get(kind, {}).get(key)
        change = None if before is None else "same" if now == before else \
            "better" if (now > before) == higher else "worse"
        rows.append({"kind": kind, "metric": key, "label": label, "n": metrics[kind]["n"], "base": before,
                     "model": now, "change": change, "shown": format_change(key, before, now, higher)
                     if before is not None else "no baseline"})
    return rows


def drift_rows(drift: dict, limits: dict | None) -> list[dict]:
    limits = limits or DEFAULT_MAX_DRIFT
    rows = []
    for kind, value in drift["kinds"].items():
        limit = drift_limit(limits, kind)
        rows.append({"kind": kind, "n": value["n"], "drift": value["drift"], "max": value["max"], "limit": limit,
                     "within": limit is None or value["drift"] <= limit})
    return rows


def runaway_counts(task: dict | None, drift: dict | None) -> dict:
    """Answers at the token cap and ending in a loop, base and fine-tuned, over both evaluations."""
    total = {who: {key: 0 for key, _label in HARMFUL_RUNAWAYS} for who in ("base", "model")}
    sources = []
    if task and task.get("runaways"):
        sources.append(("model", task["runaways"]))
        if (task.get("baseline") or {}).get("runaways"):
            sources.append(("base", task["baseline"]["runaways"]))
    if drift:
        sources += [("base", drift["runaways"]["baseline"]), ("model", drift["runaways"]["model"])]
    for who, counts in sources:
        for key, _label in HARMFUL_RUNAWAYS:
            total[who][key] += counts[key]
    return total


def verdict(task: dict | None, drift: dict | None, max_drift: dict | None = None) -> dict:
    """The verdict dict (see the module docstring); ``line`` is the one-line summary."""
    tasks = task_rows(task) if task else []
    drifts = drift_rows(drift, max_drift) if drift else []
    runaways = runaway_counts(task, drift)
    changes = [row["change"] for row in tasks if row["change"] is not None]
    task_word = None if not changes else "worse" if "worse" in changes else \
        "better" if "better" in changes else "same"
    drift_word = None if not drift else "within" if all(row["within"] for row in drifts) else "forgot"
    more = {label: (runaways["base"][key], runaways["model"][key]) for key, label in HARMFUL_RUNAWAYS
            if runaways["model"][key] > runaways["base"][key]}
    parts = []
    if task_word == "better":
        parts.append("better on the task")
    elif task_word == "worse":
        worse = ", ".join(f"{r['kind']} {r['label']}" for r in tasks if r["change"] == "worse")
        parts.append(f"WORSE on the task ({worse})")
    elif task_word == "same":
        parts.append("no better on the task")
    else:
        parts.append("task not measured (the plan has no --eval data)")
    if drift_word == "within":
        limit = max(row["drift"] for row in drifts) if drifts else 0.0
        parts.append(f"within the drift limit on general pages (worst task {limit:.3f})")
    elif drift_word == "forgot":
        past = "; ".join(f"{r['kind']} drifted {r['drift']:.3f} > {r['limit']:.2f}" for r in drifts if not r["within"])
        parts.append(f"FORGOT on general pages ({past})")
    else:
        parts.append("drift not measured (plan --general PAGES)")
    if more:
        parts.append("MORE runaway answers (" + ", ".join(
            f"{label.removeprefix('answers ')} {a} -> {b}" for label, (a, b) in more.items()) + ")")
    good = task_word == "better" and drift_word != "forgot" and not more
    return {"task": task_word, "drift": drift_word, "more_runaways": bool(more), "ok": good, "tasks": tasks,
            "drifts": drifts, "runaways": runaways, "max_drift": max_drift or DEFAULT_MAX_DRIFT,
            "line": ("verdict: " if good else "verdict: NOT READY — ") + ", ".join(parts)}


def render(v: dict) -> str:
    """The verdict table and line, for a terminal."""
    table = [["", "", "base", "fine-tuned", ""]]
    for row in v["tasks"]:
        table.append(["task", f"{row['kind']} {row['label']} (n={row['n']})",
                      "-" if row["base"] is None else format_value(row["metric"], row["base"]),
                      format_value(row["metric"], row["model"]), row["shown"]])
    for row in v["drifts"]:
        limit = "" if row["limit"] is None else f"limit {row['limit']:.2f} " + ("ok" if row["within"] else "EXCEEDED")
        table.append(["drift", f"{row['kind']} on general pages (n={row['n']})", "0 (itself)",
                      f"{row['drift']:.3f}", limit])
    for key, label in HARMFUL_RUNAWAYS:
        base, now = v["runaways"]["base"][key], v["runaways"]["model"][key]
        table.append(["runaways", label, str(base), str(now), "MORE" if now > base else ""])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["verdict table (base -> fine-tuned):"]
    lines += ["  " + "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
              for row in table]
    lines.append(v["line"])
    return "\n".join(lines)


def judge_run(plan_record: dict, bundle, base, task_metrics: dict | None, eval_dir: Path, run_dir: Path | None, *,
              device: str | None, max_new_tokens: int | None, echo) -> dict:
    """After ``train``'s export and eval: drift on the plan's general pages (if any), the verdict
    printed and written to ``eval_dir/verdict.json`` and the run's ``record.json``."""
    from paddle_ocrvl_sft.evaluate.drift import drift_summary, evaluate_drift
    from paddle_ocrvl_sft.io import write_json

    general = plan_record.get("general")
    drift = None
    if general:
        drift = evaluate_drift(bundle, base, general["pages"], out_dir=Path(eval_dir) / "general", tasks=general["tasks"],
                               max_drift=general.get("max_drift"), device=device, max_new_tokens=max_new_tokens,
                               force=True, progress=False)
        echo(f"drift on general pages: {Path(eval_dir) / 'general' / 'report.html'}\n{drift_summary(drift)}")
    v = verdict(task_metrics, drift, (general or {}).get("max_drift"))
    v["table"] = render(v)  # the printed table, as it was printed
    echo(v["table"])
    write_json(Path(eval_dir) / "verdict.json", v)
    if run_dir is not None and (Path(run_dir) / "record.json").is_file():
        record = json.loads((Path(run_dir) / "record.json").read_text(encoding="utf-8"))
        record["verdict"] = v
        write_json(Path(run_dir) / "record.json", record)
    return v
