"""``ui``: the pipeline in a browser — data, plan, runs, eval, try — over the same functions the CLI calls.

One FastAPI app (:mod:`.app`) serves a page without a build step (``static/``) and a JSON API. Each
stage is the library's own: the data views call :mod:`paddle_ocrvl_sft.data` (validate, stats, split,
convert, kie), the plan form is generated from the ``plan`` command's argparse definition and computed
by ``commands.plan.compute`` (written by running ``plan``), runs are ordinary ``train`` processes
(:mod:`.jobs`), the eval view reads what ``eval`` wrote, and Try mounts ``serve``'s app. docs/ui.md
says what the UI reads and writes and why the stack is what it is.
"""
