"""The one façade the UI and the command line call.

No tensor math here: it sequences models -> scores -> masks -> engine ->
probes, and turns CLI arguments into calls. Heavy modules are imported
inside functions so `python -m core --help` and the app start fast.
"""
from __future__ import annotations

import json
import sys

from . import models
from .errors import UserError


def compatibility(base: str, experts: list[str]) -> models.CompatReport:
    """Compatibility report for base + experts from headers alone."""
    infos = [models.inspect(base)] + [models.inspect(e) for e in experts]
    return models.compatibility(infos[0], infos[1:])


def list_methods():
    from .methods import REGISTRY
    return REGISTRY


def merge(recipe, out_dir: str | None = None, live_model=None, progress=None, **options):
    """Merge a recipe (Recipe, mapping, or path to a YAML file) into a folder
    or into an already loaded model; returns engine.MergeResult.

    options go to engine.run_merge: force, device, infos, shard_size.
    """
    from . import engine
    from . import recipe as recipes
    if isinstance(recipe, str):
        recipe = recipes.load(recipe)
    elif isinstance(recipe, dict):
        recipe = recipes.from_dict(recipe)
    return engine.run_merge(recipe, out_dir=out_dir, live_model=live_model, progress=progress, **options)


# ---------------------------------------------------------------- CLI glue
def run_cli(args) -> int:
    handler = _CLI.get(args.cmd)
    if handler is None:
        raise UserError(f"The command '{args.cmd}' is not available yet.")
    return handler(args)


def _cli_zoo(args) -> int:
    from .zoo import build
    if args.action == "build":
        build.build_all(out=args.out)
        return 0
    res = build.check_all(out=args.out)
    print(json.dumps(res, indent=2) if args.json else build.format_check(res))
    return 0


def _cli_compat(args) -> int:
    rep = compatibility(args.base, args.experts)
    for row in rep.rows:
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    for n in rep.notes:
        print("note:", n)
    if not rep.ok:
        for p in rep.problems:
            print("error:", p, file=sys.stderr)
        return 2
    print("Compatible.")
    return 0


def _cli_merge(args) -> int:
    res = merge(args.recipe, out_dir=args.out, force=args.force, device=args.device, show_bar=True)
    for n in res.notes:
        print("note:", n)
    print(f"Wrote {res.out_dir} ({res.n_tensors} tensors) in {res.seconds:.2f} s.")
    return 0


_CLI = {"zoo": _cli_zoo, "compat": _cli_compat, "merge": _cli_merge}
