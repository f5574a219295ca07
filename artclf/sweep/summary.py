"""``artclf sweep summary DIR``: choose a sweep's config on val, then score only its runs on test.

Every point of ``DIR/sweep.json`` must have finished (history.jsonl reached its last epoch,
model.pt written); otherwise the summary names the unfinished points and how to rerun only
them, unless ``--partial`` (then it chooses among the configs all of whose seeds finished).
The choice reads val only: per config, the mean over its seeds of the val macro F1 of the epoch
each run kept (val_metrics.json); the highest mean wins, a tie goes to the config first in the
plan. Then each run of that config is scored on test by ``artclf evaluate`` (a subprocess: the
stage a user would run), once: a run whose ``eval-test/`` is complete and scored this model.pt
(its ``created``) is not scored again, so a rerun resumes. No other run is scored on test.

Writes ``DIR/summary.md`` and ``DIR/summary.json``: the choice, every config's mean val, and the
table of ``artclf compare`` over the finished runs (test only for the chosen config's runs).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from artclf.config import arg, stage_main
from artclf.errors import ArtclfError
from artclf.metrics.bootstrap import CONFIDENCE, RESAMPLES, SEED, bracket
from artclf.sweep import table
from artclf.sweep.runs import TEST, Run, read_eval, read_run, scored_current
from artclf.workers import WORKERS_HELP, check_workers, parse_workers

SUBMIT = "sbatch --array={indices} slurm/sweep.sbatch (RUNS={runs})"


@dataclass(frozen=True)
class SummaryConfig:
    runs: Path = field(metadata=arg("sweep folder (artclf sweep plan --runs)", positional=True))
    partial: bool = field(
        default=False, metadata=arg("choose among the configs all of whose seeds finished; list the rest")
    )
    shards: str | None = field(default=None, metadata=arg("shard set to score on (default: each run's own)"))
    batch_size: int | None = field(default=None, metadata=arg("artclf evaluate --batch-size"))
    workers: int | str | None = field(default=None, metadata=arg(WORKERS_HELP, parse=parse_workers))
    endpoint_url: str | None = field(default=None, metadata=arg("S3 endpoint (default: each run's own)"))
    resamples: int = field(default=RESAMPLES, metadata=arg("bootstrap resamples of the test intervals"))
    seed: int = field(default=SEED, metadata=arg("seed of the bootstrap draws"))
    confidence: float = field(default=CONFIDENCE, metadata=arg("coverage of the intervals"))

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_workers(self.workers)
        if self.resamples < 1 or not 0 < self.confidence < 1:
            raise ValueError("--resamples must be >= 1 and --confidence in (0, 1)")


def main(argv: Sequence[str] | None = None) -> int:
    return stage_main(SummaryConfig, summarize, "artclf sweep summary", __doc__, argv)


def read_plan(runs: Path) -> dict:
    try:
        return json.loads((runs / "sweep.json").read_text())
    except FileNotFoundError:
        raise ArtclfError(
            f"{runs / 'sweep.json'}: missing; plan first: artclf sweep plan FILE --runs {runs}"
        ) from None
    except (OSError, ValueError) as e:
        raise ArtclfError(f"{runs / 'sweep.json'}: unreadable ({type(e).__name__}: {e})") from None


def choose(
    points: list[dict], val: dict[str, float | None], partial: bool = False, runs: Path | str = "DIR"
) -> dict:
    """The config with the highest mean val macro F1 over its seeds (a tie: first in plan order).
    ``points``: the plan's, in order; ``val``: run name -> its val macro F1, None if unfinished.
    Without ``partial`` an unfinished run is an error naming how to rerun the unfinished points."""
    configs: dict[str, list[dict]] = {}
    for p in points:
        configs.setdefault(p["config"], []).append(p)
    unfinished = [p for p in points if val.get(p["name"]) is None]
    if unfinished and not partial:
        indices = ",".join(str(p["index"]) for p in unfinished)
        raise ArtclfError(
            f"{runs}: {len(unfinished)} of {len(points)} runs unfinished: "
            + ", ".join(f"{p['index']} {p['name']}" for p in unfinished)
            + f"; rerun only them: {SUBMIT.format(indices=indices, runs=runs)}, or pass --partial to "
            "choose among the configs all of whose seeds finished"
        )
    means = {
        c: statistics.mean(val[p["name"]] for p in ps)
        for c, ps in configs.items()
        if all(val.get(p["name"]) is not None for p in ps)
    }
    if not means:
        raise ArtclfError(f"{runs}: no config has all its seeds finished; nothing to choose from")
    chosen = max(means, key=means.__getitem__)  # the first of equal maxima: plan order
    return {
        "chosen": chosen,
        "runs": [p["name"] for p in configs[chosen]],
        "val_means": means,
        "incomplete": {c: [p["name"] for p in ps if val.get(p["name"]) is None]
                       for c, ps in configs.items() if c not in means},
    }  # fmt: skip


def read_points(runs: Path, points: list[dict]) -> dict[str, Run | None]:
    """Each point's run (without test scores), None when it never started."""
    out = {}
    for p in points:
        folder = runs / p["name"]
        out[p["name"]] = read_run(folder, test=False) if (folder / "config.json").is_file() else None
    return out


def val_scores(runs: dict[str, Run | None]) -> dict[str, float | None]:
    """Run name -> val macro F1 of a finished run; None for one that is not (or never started)."""
    return {n: (r.val_macro_f1 if r is not None and r.finished else None) for n, r in runs.items()}


def evaluate(cfg: SummaryConfig, run: Run) -> None:
    """``artclf evaluate`` of the run's model.pt on test, unless eval-test already scored it."""
    if not (run.path / "model.pt").is_file():
        raise ArtclfError(f"{run.path / 'model.pt'}: missing; the run never kept a model")
    if scored_current(run.path):
        print(f"{run.path / TEST}: already scored this model.pt; kept")
        return
    shards = cfg.shards or run.flags.get("shards")
    cmd = [sys.executable, "-m", "artclf", "evaluate", "--model", str(run.path / "model.pt")]
    cmd += ["--shards", str(shards), "--split", "test"]
    endpoint = cfg.endpoint_url or run.flags.get("endpoint_url")
    for flag, value in (
        ("--batch-size", cfg.batch_size),
        ("--workers", cfg.workers),
        ("--endpoint-url", endpoint),
    ):
        if value is not None:
            cmd += [flag, str(value)]
    print("scoring on test: " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code:
        raise ArtclfError(f"{run.path}: artclf evaluate failed (exit {code}): {' '.join(cmd)}")


def chosen_test(choice: dict, data: dict) -> dict:
    """Mean ± std of the chosen runs' test macro F1."""
    return table.spread([r["test"]["macro_f1"]["value"] for r in data["runs"] if r["name"] in choice["runs"]])


def report(cfg: SummaryConfig, plan: dict, choice: dict, data: dict) -> str:
    test = chosen_test(choice, data)
    head = [
        f"# Sweep summary: {cfg.runs}\n",
        f"Sweep file `{plan.get('file')}`, {len(plan['points'])} runs. The config is chosen on val only "
        "(mean over its seeds of each run's best-epoch val macro F1); only its runs are scored on test.\n",
        f"**Chosen: {choice['chosen']}**, mean val macro F1 {choice['val_means'][choice['chosen']]:.4f}; "
        f"test macro F1 {table.fmt(test['mean'])} ± {table.fmt(test['std'])} over {test['n']} run(s).\n",
        "| config | mean val macro F1 |\n| --- | --- |",
        *(f"| {c} | {m:.4f} |" for c, m in choice["val_means"].items()),
        *(f"| {c} | unfinished: {', '.join(names)} |" for c, names in choice["incomplete"].items()),
        f"\nTensorBoard (HParams view of every run): `tensorboard --logdir {cfg.runs}`\n",
    ]
    return "\n".join(head) + "\n" + table.markdown(data)


def summarize(cfg: SummaryConfig) -> dict:
    plan = read_plan(cfg.runs)
    points = plan["points"]
    runs = read_points(cfg.runs, points)
    val = val_scores(runs)
    choice = choose(points, val, cfg.partial, cfg.runs)
    for name in choice["runs"]:
        evaluate(cfg, runs[name])
    rows = [
        runs[p["name"]] if p["name"] not in choice["runs"]
        else read_run(cfg.runs / p["name"], read_eval(cfg.runs / p["name"] / TEST))
        for p in points if val[p["name"]] is not None
    ]  # fmt: skip
    data = table.build(rows, cfg.resamples, cfg.seed, cfg.confidence)
    out = {
        "sweep": plan.get("file"),
        "dir": str(cfg.runs),
        **choice,
        "test_macro_f1": chosen_test(choice, data),
    }
    out["table"] = data
    path = table.write(cfg.runs, "summary", out, report(cfg, plan, choice, data))
    test = out["test_macro_f1"]
    print(
        f"chosen on val: {choice['chosen']} (mean val macro F1 {choice['val_means'][choice['chosen']]:.4f})"
    )
    print(f"test macro F1 {table.fmt(test['mean'])} ± {table.fmt(test['std'])} over {test['n']} run(s):")
    for r in data["runs"]:
        if r["name"] in choice["runs"]:
            print(f"  {r['name']}: macro F1 {bracket(r['test']['macro_f1'])}")
    for c, names in choice["incomplete"].items():
        print(f"not chosen, unfinished: {c}: {', '.join(names)}")
    print(f"summary: {path} (and summary.json); TensorBoard HParams: tensorboard --logdir {cfg.runs}")
    return out
