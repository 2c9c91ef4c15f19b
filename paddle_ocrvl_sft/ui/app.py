"""The UI's HTTP app: a page without a build step (``static/``) and a JSON API over the stage functions.

Pages: Data, Plan, Runs, Eval, Try (docs/ui.md). The API under ``/api``:

* ``GET /api/workspace``: the datasets, models, plans and evals under the roots (for the pickers);
* ``/api/data/*``: open a dataset (validate + stats), its problems, a page of samples, an image, the histogram;
* ``GET /api/forms/{name}``: a command's form, generated from its argparse definition;
* ``POST /api/plan/compute``: ``plan``'s checks and numbers for the form's values, nothing written;
* ``POST /api/jobs``: run a command of the pipeline (``plan``, ``data split|convert|kie|validate``,
  ``eval``) as a process; ``GET /api/jobs/{id}``: its state and output;
* ``/api/runs/*``: plans and their runs, metrics, logs, launch commands; start, resume, stop;
* ``/api/evals/*``: eval dirs, their summary, report and samples worst first;
* ``/api/models``, ``POST /api/try/load``: the models, and the one ``serve``'s app runs under ``/try/<id>/``.

The guard in front of everything: with ``api_key`` every route but the page itself needs the key
(a cookie set by ``POST /login``, or ``Authorization: Bearer KEY``); bound to a loopback address, a
request must name a loopback host (a DNS-rebinding page cannot reach it); a write must come from
the UI's own origin; bodies are bounded. Every client-named path goes through :class:`Roots`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from paddle_ocrvl_sft import __version__
from paddle_ocrvl_sft.commands.serve import is_loopback
from paddle_ocrvl_sft.errors import UsageError, UserError
from paddle_ocrvl_sft.ui import data_view, evals, forms, jobs, runs
from paddle_ocrvl_sft.ui.paths import Refused, Roots
from paddle_ocrvl_sft.ui.tryout import Playgrounds
from paddle_ocrvl_sft.ui.workspace import Workspace

STATIC = Path(__file__).parent / "static"
COOKIE = "paddle_ocrvl_ui"
PUBLIC = ("/", "/login", "/favicon.ico")
MAX_BODY = 1 << 20  # JSON bodies of the API (the Try routes have serve's own limit)
FORMS = jobs.COMMANDS  # a form for each command the UI runs: (command, subcommand) of the CLI
# POST /api/jobs runs these; train is started from the Runs page (/api/runs/start), on a plan dir
JOB_COMMANDS = {name: command for name, command in FORMS.items() if name != "train"}
# the eval form shows the options for a local model and a baseline (genai-server has its own workflow)
EVAL_FIELDS = ("model", "baseline", "data", "out", "max_new_tokens", "batch_size", "device", "normalize", "force")


def session_token(api_key: str) -> str:
    """What the login cookie holds: derived from the key, never the key itself."""
    return hmac.new(api_key.encode(), b"paddle-ocrvl-sft ui session", hashlib.sha256).hexdigest()


def error_response(status: int, message: str, kind: str = "error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def create_app(workdir: str | os.PathLike = ".", *, allow=(), api_key: str | None = None, loopback_only: bool = True,
               device: str | None = None) -> FastAPI:
    roots = Roots.create(workdir, allow)
    workspace = Workspace([roots.workdir, *roots.allowed])
    datasets = data_view.Datasets()
    playgrounds = Playgrounds(device=device)

    async def lifespan(app):
        try:
            yield
        finally:
            await playgrounds.close()

    app = FastAPI(title="paddle-ocrvl-sft ui", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(_Guard, token=session_token(api_key) if api_key else None, api_key=api_key,
                       loopback_only=loopback_only)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/try", playgrounds, name="try")
    app.state.roots = roots

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return error_response(exc.status, exc.message, "refused")

    @app.exception_handler(forms.FormError)
    async def form_error(request: Request, exc: forms.FormError):
        return error_response(422, str(exc), "usage")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError):
        return error_response(400, str(exc), "usage" if isinstance(exc, UsageError) else "error")

    @app.exception_handler(PermissionError)
    async def permission_error(request: Request, exc: PermissionError):
        return error_response(403, str(exc), "refused")

    def readable(text: str, what: str = "path") -> Path:
        return roots.resolve(text, what=what)

    # --- the page and the session -----------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    @app.post("/login")
    async def login(body: dict = Body(...)):
        given = str(body.get("key", ""))
        if not api_key:
            return {"ok": True, "auth": False}
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            return error_response(401, "wrong API key", "authentication_error")
        response = JSONResponse({"ok": True, "auth": True})
        response.set_cookie(COOKIE, session_token(api_key), httponly=True, samesite="strict")
        return response

    @app.get("/api/info")
    def info():
        return {"version": __version__, "workdir": str(roots.workdir), "allowed": [str(p) for p in roots.allowed],
                "auth": bool(api_key)}

    @app.get("/api/workspace")
    def workspace_listing(fresh: bool = False):
        found = workspace.found(fresh)
        return {"datasets": [roots.shown(p) for p in found.datasets], "models": [roots.shown(p) for p in found.models],
                "plans": [roots.shown(p) for p in found.plans], "evals": [roots.shown(p) for p in found.evals],
                "truncated": found.truncated}

    # --- data ---------------------------------------------------------------------------------------

    def opened(path: str, model: str | None, max_seq_len: int | None):
        return datasets.open(readable(path, "dataset"), model_dir=readable(model, "--model") if model else None,
                             max_seq_len=max_seq_len)

    @app.get("/api/data/open")
    def data_open(path: str, model: str | None = None, max_seq_len: int | None = Query(None, ge=1)):
        return data_view.summary(opened(path, model, max_seq_len), roots)

    @app.get("/api/data/problems")
    def data_problems(path: str, model: str | None = None, max_seq_len: int | None = Query(None, ge=1),
                      severity: str | None = None, rule: str | None = None,
                      offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)):
        return data_view.problems(opened(path, model, max_seq_len), severity=severity or None, rule=rule or None,
                                  offset=offset, limit=limit)

    @app.get("/api/data/samples")
    def data_samples(path: str, model: str | None = None, max_seq_len: int | None = Query(None, ge=1),
                     show: str = "all", offset: int = Query(0, ge=0), limit: int = Query(10, ge=1, le=100)):
        page = data_view.samples(opened(path, model, max_seq_len), show=show, offset=offset, limit=limit)
        for sample in page["samples"]:
            for image in sample["images"]:
                image.pop("resolved", None)  # the page asks for an image by (file, line, index), never by path
        return page

    @app.get("/api/data/image")
    def data_image(path: str, line: int = Query(..., ge=1), index: int = Query(0, ge=0)):
        from paddle_ocrvl_sft.data.sample import is_remote, resolve_image

        dataset = readable(path, "dataset")
        record = data_view.record_at(dataset, line)
        try:
            url = record.value["image_info"][index]["image_url"]
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{dataset.name}:{line}: no image_info[{index}].image_url") from None
        if not isinstance(url, str) or is_remote(url) or url.startswith("data:"):
            raise UserError(f"{dataset.name}:{line}: image_info[{index}] is not a local file (not fetched)")
        png = data_view.image_png(resolve_image(url, dataset), roots)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=60"})

    @app.get("/api/data/stats.png")
    def data_stats_png(path: str, model: str | None = None, max_seq_len: int | None = Query(None, ge=1)):
        return Response(data_view.stats_png(opened(path, model, max_seq_len)), media_type="image/png")

    # --- forms, plan and jobs -----------------------------------------------------------------------

    def parser_for(name: str):
        if name not in FORMS:
            raise UserError(f"form {name!r}: not one of {', '.join(sorted(FORMS))}")
        return forms.command_parser(*FORMS[name])

    @app.get("/api/forms/{name}")
    def form(name: str):
        fields = forms.fields(parser_for(name))
        if name == "eval":
            fields = [f for f in fields if f["dest"] in EVAL_FIELDS]
        return {"name": name, "command": list(FORMS[name]), "fields": fields}

    @app.post("/api/plan/compute")
    def plan_compute(body: dict = Body(...)):
        """``plan``'s refusals and numbers for the form's values (``commands.plan.compute``): nothing written."""
        from paddle_ocrvl_sft.commands import plan as plan_command

        values = body.get("values") or {}
        out: dict[str, Any] = {"ok": False, "argv": None, "command_line": None,
                               "release": model_release(values.get("model"), values.get("release"))}
        try:
            parser = parser_for("plan")
            argv = forms.to_argv(parser, values, roots)
            out.update(argv=argv, command_line=forms.command_line(("plan",), argv))
            args = forms.parse(parser, argv)
            result = plan_command.compute(args)
        except forms.FormError as exc:
            return {**out, "error": f"usage: {exc}", "kind": "usage"}
        except Refused as exc:
            return {**out, "error": exc.message, "kind": "refused"}
        except UserError as exc:
            return {**out, "error": f"error: {exc}", "kind": "error"}
        return {**out, "ok": True, "record": result.record, "warnings": result.warnings}

    def model_release(model: str | None, override: str | None) -> dict | None:
        if not model:
            return None
        from paddle_ocrvl_sft import releases

        try:
            path = readable(model, "--model")
            found = releases.detect(path, override or None)
        except (UserError, Refused) as exc:
            return {"error": exc.message if isinstance(exc, Refused) else str(exc)}
        return {"name": found.release.name, "title": found.release.title, "evidence": found.evidence,
                "notes": found.notes}

    @app.post("/api/jobs")
    def start_job(body: dict = Body(...)):
        name = body.get("command")
        if name not in JOB_COMMANDS:
            raise UserError(f"command {name!r}: the UI runs {', '.join(sorted(JOB_COMMANDS))}")
        parser = parser_for(name)
        argv = forms.to_argv(parser, body.get("values") or {}, roots)
        args = forms.parse(parser, argv)  # a usage error now, not in the job's log
        meta = {"plan": str(roots.resolve(args.out, write=True))} if name == "plan" else \
               {"out": str(roots.resolve(args.out, write=True))} if name == "eval" else {}
        return jobs.start(roots.workdir, JOB_COMMANDS[name], argv, **meta)

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str, lines: int = Query(200, ge=1, le=5000)):
        record = jobs.load(roots.workdir, job_id)
        if record["state"] not in ("running", "stopping"):
            workspace.forget()  # what it wrote is listed at once
        return {**record, "log": jobs.tail(jobs.log_path(roots.workdir, job_id), lines)}

    @app.post("/api/jobs/{job_id}/stop")
    def job_stop(job_id: str):
        return jobs.stop(roots.workdir, job_id)

    # --- runs ---------------------------------------------------------------------------------------

    def plan_dir(text: str) -> Path:
        path = readable(text, "plan")
        if not (path / "plan.json").is_file():
            raise UserError(f"{text}: not a plan dir (no plan.json)")
        return path

    def run_path(plan: Path, run: str | None) -> Path | None:
        ids = runs.run_ids(plan)
        if not ids:
            return None
        return runs.run_dir(plan, run or ids[-1])

    @app.get("/api/runs")
    def runs_listing():
        out = []
        known = jobs.all_jobs(roots.workdir)
        for plan in workspace.found().plans:
            state = runs.plan_state(plan, roots.workdir, known)
            last = state["runs"][-1] if state["runs"] else None
            points = runs.metrics(plan / "runs" / last["id"]) if last else []
            out.append({"plan": roots.shown(plan), "state": state["state"], "backend": state["backend"],
                        "device": state["device"], "runs": len(state["runs"]),
                        "progress": runs.progress(points, last and last.get("max_steps") or state["max_steps"])})
        return {"plans": out}

    @app.get("/api/runs/plan")
    def plan_details(plan: str):
        path = plan_dir(plan)
        state = runs.plan_state(path, roots.workdir)
        record = runs.read_json(path / "plan.json") or {}
        for key in ("bundle", "eval"):
            state[key] = roots.shown(state[key]) if state[key] else None
        state["plan"] = roots.shown(path)
        if state["job"]:
            state["console"] = jobs.tail(jobs.jobs_dir(roots.workdir) / f"{state['job']['id']}.log", 40)
        return {**state, "record": {k: record.get(k) for k in ("backend", "device", "model", "numbers", "warnings",
                                                              "estimates", "train", "datasets", "preset", "release")}}

    @app.get("/api/runs/launch")
    def launch_commands(plan: str):
        """The exact commands: ``train PLAN --dry-run`` (this node) and, for several nodes, one line per node."""
        from paddle_ocrvl_sft import train

        path = plan_dir(plan)
        record = runs.read_json(path / "plan.json") or {}
        launch = record.get("train") or {}
        lines: list[str] = []
        state = runs.plan_state(path, roots.workdir)
        nodes = int(launch.get("nodes", 1) or 1)
        env = launch.get("env", {})
        master = f"{env.get('MASTER_ADDR', 'HOST')}:{env.get('MASTER_PORT', 'PORT')}"
        if nodes > 1:  # node 0's command; every node names its rank and the same checkpoint to resume (docs/train.md)
            options = train.Options(dry_run=True, nodes=nodes, node_rank=0, master=master)
        else:
            options = train.Options(dry_run=True, resume="last" if state["can_resume"] else None)
        try:
            train.run(path, options, echo=lines.append)
            dry_run = {"ok": True, "lines": lines, "resume": bool(options.resume)}
        except UserError as exc:
            dry_run = {"ok": False, "lines": lines, "error": str(exc), "resume": bool(options.resume)}
        per_node = []
        if nodes > 1:
            per_node = [forms.command_line(("train",), [str(path), "--nodes", str(nodes), "--node-rank", str(r),
                                                         "--master", master]) for r in range(nodes)]
        return {"plan": roots.shown(path), "nodes": nodes, "gpus_per_node": launch.get("gpus_per_node"),
                "env": launch.get("env", {}), "command": launch.get("command", []), "dry_run": dry_run,
                "per_node": per_node, "train": forms.command_line(("train",), [str(path)])}

    @app.get("/api/runs/metrics")
    def run_metrics(plan: str, run: str | None = None, since: int = Query(0, ge=0)):
        path = plan_dir(plan)
        folder = run_path(path, run)
        if folder is None:
            return {"run": None, "points": [], "eval_points": [], "progress": {}}
        record = runs.read_json(folder / "record.json") or {}
        points = runs.metrics(folder)
        max_steps = (record.get("config") or {}).get("max_steps")
        return {"run": folder.name, "since": since, "total": len(points), "points": points[since:],
                "eval_points": runs.eval_losses(folder / "train.log", record.get("backend", "erniekit")),
                "progress": runs.progress(points, max_steps)}

    @app.get("/api/runs/log")
    def run_log(plan: str, run: str | None = None, lines: int = Query(80, ge=1, le=5000)):
        path = plan_dir(plan)
        folder = run_path(path, run)
        return {"run": folder.name if folder else None,
                "train_log": jobs.tail(folder / "train.log", lines) if folder else []}

    @app.post("/api/runs/start")
    def run_start(body: dict = Body(...)):
        """``train PLAN`` (mode start), ``train PLAN --resume`` or ``train PLAN --force``, as a job."""
        path = plan_dir(str(body.get("plan", "")))
        roots.resolve(str(path), write=True, what="plan")
        mode = body.get("mode", "start")
        values: dict[str, Any] = {"plan_dir": str(path), "overrides": str(body.get("overrides") or "").split()}
        if mode == "resume":
            values["resume"] = "last"
        elif mode == "force":
            values["force"] = True
        elif mode != "start":
            raise UserError(f"mode {mode!r}: start, resume or force")
        parser = parser_for("train")
        argv = forms.to_argv(parser, values, roots)
        forms.parse(parser, argv)
        return jobs.start(roots.workdir, ("train",), argv, plan=str(path))

    @app.post("/api/runs/stop")
    def run_stop(body: dict = Body(...)):
        """Ctrl-C: to the UI's job's process group, or to a ``train`` started in a terminal (the lock's pid)."""
        path = plan_dir(str(body.get("plan", "")))
        roots.resolve(str(path), write=True, what="plan")  # as Start: an --allow dir's runs are seen, never stopped
        state = runs.plan_state(path, roots.workdir)
        job = state["job"]
        if job and job["state"] in ("running", "stopping"):
            return {"stopped": "job", **jobs.stop(roots.workdir, job["id"])}
        if state["lock"]:
            jobs.interrupt(state["lock"]["pid"])
            return {"stopped": "pid", "pid": state["lock"]["pid"]}
        raise UserError(f"{roots.shown(path)}: not being trained")

    # --- eval ---------------------------------------------------------------------------------------

    def eval_dir(text: str) -> Path:
        from paddle_ocrvl_sft.ui.workspace import is_eval

        path = readable(text, "eval dir")
        if not is_eval(path):
            raise UserError(f"{text}: not an eval dir (no metrics.json and scores.jsonl)")
        return path

    @app.get("/api/evals")
    def evals_listing():
        out = []
        for path in workspace.found().evals:
            try:
                out.append(evals.summary(path, roots))
            except UserError as exc:
                out.append({"dir": roots.shown(path), "error": str(exc)})
        return {"evals": out, "jobs": [j for j in jobs.all_jobs(roots.workdir) if j.get("command") == ["eval"]][:10]}

    @app.get("/api/evals/summary")
    def eval_summary(dir: str):
        return evals.summary(eval_dir(dir), roots)

    @app.get("/api/evals/samples")
    def eval_samples(dir: str, offset: int = Query(0, ge=0), limit: int = Query(10, ge=1, le=100), kind: str | None = None):
        return evals.samples(eval_dir(dir), offset=offset, limit=limit, kind=kind or None)

    @app.get("/api/evals/image")
    def eval_image(dir: str, index: int = Query(..., ge=0)):
        image = evals.sample_image(eval_dir(dir), index)
        return Response(data_view.image_png(Path(image), roots), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=60"})

    @app.get("/api/evals/report")
    def eval_report(dir: str):
        """``report.html`` as eval wrote it (self-contained, no script), shown in a sandboxed frame."""
        path = eval_dir(dir) / "report.html"
        if not path.is_file():
            raise UserError(f"{dir}: no report.html")
        return FileResponse(path, media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; sandbox"})

    @app.get("/api/evals/defaults")
    def eval_defaults(model: str):
        """For a plan's bundle: its base model (the baseline) and the plan's validation file."""
        path = readable(model, "--model")
        plan = path.parent / "plan.json"
        record = runs.read_json(plan) if path.name == "bundle" and plan.is_file() else None
        if not record:
            return {"baseline": None, "data": None}
        evals_ = record.get("datasets", {}).get("eval") or record.get("datasets", {}).get("train") or []
        data = evals_[0]["path"] if evals_ else None
        base = record.get("model")
        return {"baseline": roots.shown(base) if base and roots.inside(Path(base)) else None,
                "data": roots.shown(data) if data and roots.inside(Path(data)) else None,
                "out": roots.shown(path.parent / "eval-ui")}

    # --- models and Try -----------------------------------------------------------------------------

    @app.get("/api/models")
    def models_listing():
        out = []
        for path in workspace.found().models:
            entry = {"model": roots.shown(path), "release": model_release(str(path), None)}
            plan = path.parent / "plan.json"
            entry["kind"] = "fine-tuned bundle" if path.name == "bundle" and plan.is_file() else "model"
            out.append(entry)
        return {"models": out, "loaded": playgrounds.info() and {**playgrounds.info(),
                                                                  "model": roots.shown(playgrounds.info()["model"])}}

    @app.post("/api/try/load")
    async def try_load(body: dict = Body(...)):
        from paddle_ocrvl_sft.ui.workspace import is_model

        path = readable(str(body.get("model", "")), "--model")
        if not is_model(path):
            raise UserError(f"{roots.shown(path)}: not a model dir (inference.yml and config.json)")
        cap = body.get("max_new_tokens") or 1024
        if not isinstance(cap, int) or not 1 <= cap <= 32768:
            raise UserError(f"max_new_tokens {cap!r}: an integer in 1..32768")
        loaded = await playgrounds.load(path, backend=str(body.get("backend") or "paddle"), max_new_tokens=cap)
        return {**loaded, "model": roots.shown(loaded["model"])}

    return app


class _Guard:
    """ASGI middleware before any route: host, origin, API key and body size."""

    def __init__(self, app, *, token: str | None, api_key: str | None, loopback_only: bool):
        self.app = app
        self.token = token
        self.api_key = api_key
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, scope) -> JSONResponse | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        # the address `ui --host` accepted as loopback (127.0.0.2 too), or localhost: never a DNS name
        if self.loopback_only and not is_loopback(_host_name(host).strip("[]")):
            return error_response(403, f"Host {host!r}: this UI answers to a loopback address or localhost only "
                                       "(start it with --host and --api-key to reach it from elsewhere)", "refused")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != host:
                return error_response(403, f"Origin {origin}: writes come from the UI's own page only", "refused")
            if not scope["path"].startswith("/try/") and not headers.get("content-type", "").startswith("application/json"):
                return error_response(415, "send application/json", "usage")
        path = scope["path"]
        if self.token and path not in PUBLIC and not path.startswith("/static/"):
            auth = headers.get("authorization", "")
            cookie = _cookie(headers.get("cookie", ""), COOKIE)
            by_header = auth[:7].lower() == "bearer " and hmac.compare_digest(auth[7:].strip().encode(), self.api_key.encode())
            by_cookie = cookie is not None and hmac.compare_digest(cookie.encode(), self.token.encode())
            if not (by_header or by_cookie):
                return error_response(401, "this UI needs its API key: enter it on the page", "authentication_error")
        length = headers.get("content-length")
        if path.startswith("/try/"):
            return None  # serve's own guard bounds the uploads
        if length is None and scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            return error_response(411, "send a Content-Length", "usage")
        if length is not None:
            if not length.isdigit():
                return error_response(400, "Content-Length is not a number", "usage")
            if int(length) > MAX_BODY:
                return error_response(413, f"the body is {length} bytes, more than {MAX_BODY}", "usage")
        return None


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None

