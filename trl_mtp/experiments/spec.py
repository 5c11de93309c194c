"""An experiment spec (YAML): what to run (variants x seeds x tasks), from which base, and how to read the results.

The format is documented in docs/experiments.md. `load_spec` checks everything that can be checked without running
(keys, import paths, the run function's argument names, baseline, metric definitions) and raises ValueError naming
the bad value, so a typo never surfaces hours into a grid.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from trl_mtp.experiments import run_dir_name

SPEC_KEYS = {
    "name",
    "description",
    "run",
    "base",
    "out",
    "results",
    "seeds",
    "common",
    "variants",
    "variant_key",
    "tasks",
    "baseline",
    "metrics",
    "estimate_seconds_per_run",
}
RESULTS_ROOT = Path("docs/results")  # where the result files of a spec without `results` go: committed with the docs
REQUIRED_KEYS = ("name", "run", "out", "seeds", "variants")
METRIC_KEYS = {"name", "items", "scalar", "format", "ci", "compare"}


@dataclass(frozen=True)
class Metric:
    """How to read one number from each run's result: `items` (a per-item list, the same items in every seed) or
    `scalar` (one number per run). `path` is dotted; `{task}` is replaced by the task name."""

    name: str
    path: str
    kind: str  # "items" or "scalar"
    format: str = ".3f"
    ci: bool = True
    compare: bool = True

    def path_for(self, task: str | None) -> list[str]:
        return self.path.format(task=task or "").split(".")


@dataclass(frozen=True)
class Run:
    """One cell of the grid."""

    task: str | None
    variant: str
    seed: int
    run_dir: Path
    kwargs: dict = field(compare=False)  # the run function's keyword arguments, `seed` included (not in the hash)

    @property
    def label(self) -> str:
        return f"{self.task + ' / ' if self.task else ''}{self.variant} seed {self.seed}"


@dataclass
class Spec:
    name: str
    run: str
    out: Path
    seeds: list[int]
    variants: dict[str, dict]
    description: str = ""
    base: dict | None = None
    common: dict = field(default_factory=dict)
    variant_key: str | None = None
    tasks: dict[str, dict] | None = None
    baseline: str | None = None
    metrics: list[Metric] = field(default_factory=list)
    estimate_seconds_per_run: float | None = None
    results: Path | None = None

    @property
    def results_dir(self) -> Path:
        """The folder of the spec's result files (runs.csv, table.json, table.md)."""
        return self.results if self.results is not None else RESULTS_ROOT / run_dir_name(self.name)

    def rows(self, only=None) -> list[tuple[str | None, str]]:
        """(task, variant) pairs in table order: tasks, then variants in spec order."""
        variants = [v for v in self.variants if only is None or v in only]
        return [(task, v) for task in (self.tasks or [None]) for v in variants]

    def grid(self, only=None, seeds=None) -> list[Run]:
        """Every run, seed-major (all variants of the first seed, then the next seed...), so that a grid cut short
        still compares every variant on the seeds it finished."""
        runs = []
        for seed in self.seeds if seeds is None else seeds:
            for task, variant in self.rows(only):
                folder = self.out / run_dir_name(task) if task else self.out
                fields = self.variants[variant]
                kwargs = {
                    **self.common,
                    **((self.tasks or {}).get(task) or {}),
                    **({self.variant_key: fields} if self.variant_key else fields),
                    "seed": seed,
                }
                runs.append(Run(task, variant, seed, folder / run_dir_name(variant) / f"seed{seed}", kwargs))
        return runs

    def run_function(self):
        return import_callable(self.run, "run")

    def resolve_base(self) -> str | None:
        """The base model folder every run starts from: `base.path`, or what `base.run(**base.args)` returns."""
        if self.base is None:
            return None
        if "path" in self.base:
            return str(self.base["path"])
        return str(import_callable(self.base["run"], "base.run")(**(self.base.get("args") or {})))


def import_callable(path: str, what: str):
    """`package.module:function` -> the function. The current directory is importable, as with `python -m`."""
    if not isinstance(path, str) or path.count(":") != 1:
        raise ValueError(f"{what}: expected 'package.module:function', got {path!r}")
    module_name, attr = path.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{what}: cannot import {module_name!r} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"{what}: {module_name!r} has no function {attr!r}")
    return fn


def accepted_keywords(fn) -> tuple[set[str], list[str]] | None:
    """(names, config classes): the keyword arguments a run function `fn(base_dir, out_dir, **kwargs)` takes, i.e.
    its named parameters, plus, when it passes `**kwargs` on to config classes, their fields; the classes are named
    by the function's `forwards_to` ("package.module:Class", ...). None: it takes any keyword and does not say
    which, so nothing can be checked."""
    params = list(inspect.signature(fn).parameters.values())[2:]  # base_dir and out_dir come from the runner
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        return names, []
    targets = getattr(fn, "forwards_to", None)
    if targets is None:
        return None
    for target in targets:
        names |= {f.name for f in dataclasses.fields(import_callable(target, f"{fn.__name__}.forwards_to"))}
    return names, list(targets)


def check_argument_names(spec: Spec) -> None:
    """Every key of `common`, of each variant and of each task's parameters is an argument of the run function, or
    ValueError naming it and the closest argument (a typo would otherwise fail hours into a grid, or not at all)."""
    accepted = accepted_keywords(spec.run_function())
    if accepted is None:
        return
    names, classes = accepted
    variants = [] if spec.variant_key else [(f"variant {n!r}", fields) for n, fields in spec.variants.items()]
    given = {spec.variant_key: None} if spec.variant_key else {}
    for where, fields in [
        ("common", spec.common),
        ("variant_key", given),
        *variants,
        *((f"task {n!r}", p) for n, p in (spec.tasks or {}).items()),
    ]:
        for key in (k for k in fields if k not in names):
            close = difflib.get_close_matches(key, names, n=1)
            if close:
                known = f"did you mean {close[0]!r}?"
            elif classes:
                known = f"nor a field of {', '.join(classes)}"
            else:
                known = f"its arguments: {', '.join(sorted(names))}"
            raise ValueError(f"{where}: {key!r} is not an argument of {spec.run}; {known}")


def _require(condition: bool, message: str):
    if not condition:
        raise ValueError(message)


def _mapping(value, what: str) -> dict:
    _require(value is None or isinstance(value, dict), f"{what}: expected a mapping, got {value!r}")
    return dict(value or {})


def _metric(raw, i: int) -> Metric:
    _require(isinstance(raw, dict), f"metrics[{i}]: expected a mapping, got {raw!r}")
    for key in set(raw) - METRIC_KEYS:
        raise ValueError(f"metrics[{i}]: unknown key {key!r}; known: {', '.join(sorted(METRIC_KEYS))}")
    _require(isinstance(raw.get("name"), str) and raw["name"], f"metrics[{i}]: needs a 'name'")
    kinds = [k for k in ("items", "scalar") if k in raw]
    _require(len(kinds) == 1, f"metric {raw['name']!r}: give exactly one of 'items' or 'scalar'")
    path = raw[kinds[0]]
    _require(
        isinstance(path, str) and path and all(path.split(".")),
        f"metric {raw['name']!r}: bad path {path!r} (dotted keys, e.g. tasks.star_graph.correct)",
    )
    try:
        path.format(task="x")
    except (KeyError, IndexError, ValueError):
        raise ValueError(f"metric {raw['name']!r}: bad path {path!r} (the only placeholder is {{task}})") from None
    fmt = raw.get("format", ".3f")
    try:
        format(1.5, fmt), format(1.5, "+" + fmt)
    except (ValueError, TypeError):
        raise ValueError(
            f"metric {raw['name']!r}: bad format {fmt!r} (a Python format spec without sign, e.g. .3f)"
        ) from None
    return Metric(raw["name"], path, kinds[0], fmt, bool(raw.get("ci", True)), bool(raw.get("compare", True)))


def parse_spec(raw, source: str = "spec") -> Spec:
    """A checked Spec from the parsed YAML mapping; imports the run and base functions to check they exist."""
    _require(isinstance(raw, dict), f"{source}: expected a mapping at the top level")
    for key in set(raw) - SPEC_KEYS:
        raise ValueError(f"{source}: unknown key {key!r}; known: {', '.join(sorted(SPEC_KEYS))}")
    for key in (k for k in REQUIRED_KEYS if k not in raw):
        raise ValueError(f"{source}: missing key {key!r}")
    seeds = raw["seeds"]
    _require(
        isinstance(seeds, list)
        and seeds
        and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        and len(set(seeds)) == len(seeds),
        f"seeds: expected a list of distinct integers, got {seeds!r}",
    )
    variants = _mapping(raw["variants"], "variants")
    _require(bool(variants), "variants: at least one variant is needed")
    for name, fields in variants.items():
        variants[name] = _mapping(fields, f"variant {name!r}")
    tasks = None
    if raw.get("tasks") is not None:
        tasks = _mapping(raw["tasks"], "tasks")
        _require(bool(tasks), "tasks: leave it out, or name at least one task")
        for name, params in tasks.items():
            tasks[name] = _mapping(params, f"task {name!r}")
    for axis, names in (("variants", variants), ("tasks", tasks or {})):
        folders = [run_dir_name(str(n)) for n in names]
        clash = next((n for n, f in zip(names, folders) if folders.count(f) > 1), None)
        _require(clash is None, f"{axis}: {clash!r} maps to the same run folder as another name")
    common = _mapping(raw.get("common"), "common")
    variant_key = raw.get("variant_key")
    _require(variant_key is None or isinstance(variant_key, str), f"variant_key: expected a name, got {variant_key!r}")
    for where, fields in [
        ("common", common),
        *((f"variant {n!r}", f) for n, f in variants.items()),
        *((f"task {n!r}", p) for n, p in (tasks or {}).items()),
    ]:
        _require("seed" not in fields, f"{where}: 'seed' comes from the seeds list, not from the arguments")
    baseline = raw.get("baseline")
    _require(
        baseline is None or baseline in variants,
        f"baseline: {baseline!r} is not among the variants ({', '.join(map(repr, variants))})",
    )
    metrics = raw.get("metrics") or []
    _require(isinstance(metrics, list), f"metrics: expected a list, got {metrics!r}")
    metrics = [_metric(m, i) for i, m in enumerate(metrics)]
    names = [m.name for m in metrics]
    for name in (n for n in names if names.count(n) > 1):
        raise ValueError(f"metrics: duplicate name {name!r}")
    base = raw.get("base")
    if base is not None:
        base = _mapping(base, "base")
        _require(
            set(base) in ({"path"}, {"run"}, {"run", "args"}),
            f"base: expected {{path: DIR}} or {{run: module:function, args: {{...}}}}, got {base!r}",
        )
        if "run" in base:
            _mapping(base.get("args"), "base.args")
            import_callable(base["run"], "base.run")
    estimate = raw.get("estimate_seconds_per_run")
    _require(
        estimate is None or (isinstance(estimate, (int, float)) and estimate >= 0),
        f"estimate_seconds_per_run: expected a number >= 0, got {estimate!r}",
    )
    results = raw.get("results")
    _require(results is None or (isinstance(results, str) and results), f"results: expected a folder, got {results!r}")
    spec = Spec(
        name=str(raw["name"]),
        run=raw["run"],
        out=Path(raw["out"]),
        seeds=seeds,
        variants=variants,
        description=str(raw.get("description") or ""),
        base=base,
        common=common,
        variant_key=variant_key,
        tasks=tasks,
        baseline=baseline,
        metrics=metrics,
        estimate_seconds_per_run=estimate,
        results=Path(results) if results else None,
    )
    check_argument_names(spec)  # also imports the run function: a wrong `run:` fails here
    return spec


def load_spec(path) -> Spec:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no spec file {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})".replace("\n", " ")) from None
    return parse_spec(raw, str(path))
