"""Benchmark the pipeline against its performance targets and write BENCHMARKS.md.

Targets:
1. full MNIST (`data.source: npz`), default params: `dvc repro` from scratch in under 4
   minutes and 3 GB, and at most 1.15 times one plain Python process running every stage's
   main() in order;
2. batched activation extraction at least 500 times faster per image than the article's
   one `predict` call per image, both warmed up (the one-off tracing of the extract stage's
   forward pass is reported beside it);
3. after a full run, a changed `detect.*` key re-runs only detect and evaluate in under 15%
   of the full run, and a `dvc repro` with nothing changed takes under 3 seconds;
4. a sweep of two queued experiments with `STAGE_THREADS=1 dvc queue start -j 2`, against
   the same two run one after the other (reported, no target), and STAGE_THREADS reaching
   the queue's stage processes.

Every measurement runs in a temporary git clone of this repository at the HEAD commit of
the start (uncommitted edits are not measured), with dvc.lock removed so every stage runs
from scratch.
Memory is the peak of the summed resident set size (RSS) of the measured command and all
its descendant processes, polled with psutil every 0.1 s; the same polling times each stage
process. Speed on a shared machine drifts, so the dvc and plain runs alternate and their
ratio is taken run by run.
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil
import yaml

from stages.params import merged
from stages.report import flatten

ROOT = Path(__file__).resolve().parent.parent
EXTRACTION_SCRIPT = Path(__file__).resolve().parent / "extraction.py"
STAGES = ("prepare", "corrupt", "train", "extract", "detect", "evaluate")
DOWNSTREAM_OF_DETECT = ["detect", "evaluate"]
DETECT_CHANGE = {"detect": {"iforest": {"n_estimators": 101}}}
DETECT_CHANGE_SHOWN = "`detect.iforest.n_estimators: 101` (default 100)"
THREADS_VARIABLE = "STAGE_THREADS"
SWEEP_THREADS = "1"
SWEEP_JOBS = 2
SWEEP_TIMEOUT_SECONDS = 1800
WORKER_EXIT_SECONDS = 30
POLL_SECONDS = 0.1
QUEUE_POLL_SECONDS = 0.25
GIB = 1024 ** 3
COMPARISONS = {"<": operator.lt, "<=": operator.le, ">=": operator.ge}

TINY = {"data": {"limit": 200}, "train": {"epochs": 1}, "evaluate": {"bootstrap": 20}}
# The plain reference: one process, runpy running each stage as `python -m stages.<name>` would.
PLAIN_SCRIPT = """\
import runpy, sys, time
for stage in sys.argv[1:]:
    started = time.perf_counter()
    runpy.run_module(f"stages.{stage}", run_name="__main__")
    print(f"plain-stage {stage} {time.perf_counter() - started:.3f}", flush=True)
"""


class BenchmarkError(Exception):
    """A measured command failed or the pipeline did not do what a target assumes."""


@dataclass(frozen=True)
class Mode:
    name: str
    full_params: dict      # written over params.yaml for targets 1-3, besides the npz source
    sweep_params: dict     # for target 4, on the bundled data
    sweep_settings: tuple[str, ...]   # one `-S` per experiment of the sweep
    extraction_images: int


FULL = Mode("full", {}, {"data": {"limit": 1000}, "train": {"epochs": 2}},
            ("noise.level=3", "noise.level=4"), 500)
# Experiments that re-run only detect and evaluate keep the smoke test short.
QUICK = Mode("quick", TINY, TINY,
             ("detect.iforest.n_estimators=50", "detect.iforest.n_estimators=60"), 20)


# --- clones ---------------------------------------------------------------------------------

def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def set_params(repo: Path, changes: dict) -> None:
    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(merged(yaml.safe_load(path.read_text()), changes),
                                   sort_keys=False))


@dataclass(frozen=True)
class Checkout:
    """A commit of this repository and the params to run it with."""

    revision: str
    params: dict

    @contextmanager
    def clone(self) -> Iterator[Path]:
        """A temporary clone at `revision` with `params` over params.yaml and no dvc.lock,
        committed (dvc exp needs a clean baseline); removed afterwards."""
        folder = Path(tempfile.mkdtemp(prefix="bench-"))
        repo = folder / "repo"
        try:
            git(ROOT, "clone", "-q", str(ROOT), str(repo))
            git(repo, "checkout", "-q", "-B", "benchmark", self.revision)
            git(repo, "config", "user.name", "benchmark")
            git(repo, "config", "user.email", "benchmark@example.invalid")
            (repo / "dvc.lock").unlink(missing_ok=True)
            set_params(repo, self.params)
            commit(repo, "benchmark params")
            yield repo
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)


# --- measuring a command --------------------------------------------------------------------

@dataclass
class StageUsage:
    """One stage process as the poller saw it."""

    first_seen: float
    last_seen: float
    peak_rss: int

    @property
    def seconds(self) -> float:
        return self.last_seen - self.first_seen


def stage_of(command_line: list[str]) -> str | None:
    """The stage a `python -m stages.<name>` process runs, else None."""
    if "-m" in command_line[:-1]:
        module = command_line[command_line.index("-m") + 1]
        if module.startswith("stages."):
            return module.removeprefix("stages.")
    return None


class ProcessTreeMonitor:
    """Polls a process and its descendants every POLL_SECONDS: the peak of their summed RSS,
    and per stage process the span of time it was seen and its own peak RSS."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self.stages: dict[str, StageUsage] = {}
        self._stages_by_pid: dict[int, str] = {}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> "ProcessTreeMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exception) -> None:
        self._stopped.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stopped.is_set():
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            now = time.perf_counter()
            self.peak_rss = max(self.peak_rss, sum(self._sample(p, now) for p in processes))
            self._stopped.wait(POLL_SECONDS)

    def _sample(self, process: psutil.Process, now: float) -> int:
        """The process's RSS (0 if it is gone), recorded against its stage if it runs one."""
        try:
            rss = process.memory_info().rss
            if process.pid not in self._stages_by_pid:
                # Remember only a found stage: a child caught between fork and exec still
                # shows its parent's command line.
                stage = stage_of(process.cmdline())
                if stage is not None:
                    self._stages_by_pid[process.pid] = stage
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            return 0
        stage = self._stages_by_pid.get(process.pid)
        if stage is not None:
            usage = self.stages.setdefault(stage, StageUsage(now, now, 0))
            usage.last_seen = now
            usage.peak_rss = max(usage.peak_rss, rss)
        return rss


@dataclass
class Run:
    seconds: float
    peak_rss: int
    stages: dict[str, StageUsage]
    output: str

    @property
    def ran(self) -> list[str]:
        """The stages a `dvc repro` or `dvc exp run` output says it ran, in order."""
        return re.findall(r"Running stage '([^']+)'", self.output)


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without a thread limit, plus `extra`."""
    variables = {key: value for key, value in os.environ.items() if key != THREADS_VARIABLE}
    return {**variables, **(extra or {})}


def measure(command: list[str], repo: Path) -> Run:
    """Run `command` in `repo`, timing it and watching its process tree; stop if it fails."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=repo, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    with ProcessTreeMonitor(process.pid) as monitor:
        output, _ = process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise BenchmarkError(f"`{' '.join(command)}` failed in {repo}:\n{output[-4000:]}")
    return Run(seconds, monitor.peak_rss, monitor.stages, output)


def progress(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


# --- targets 1-3: full MNIST ----------------------------------------------------------------

@dataclass
class FullRepeat:
    repro: Run
    detect_change: Run
    no_change: Run
    plain: Run
    extraction: dict | None

    @property
    def plain_stage_seconds(self) -> dict[str, float]:
        return {stage: float(seconds) for stage, seconds
                in re.findall(r"^plain-stage (\w+) ([\d.]+)$", self.plain.output, re.M)}


@dataclass(frozen=True)
class Extraction:
    images: int
    repeats: int


def expect_stages(run: Run, expected: list[str], what: str) -> None:
    if run.ran != expected:
        raise BenchmarkError(f"{what} ran stages {run.ran}, expected {expected}")


def dvc_pass(checkout: Checkout,
             extraction: Extraction | None) -> tuple[Run, Run, Run, dict | None]:
    """From scratch, then (when asked) the extraction timing on its model, then after a
    detect.* change, then with nothing changed."""
    with checkout.clone() as repo:
        repro = measure(["dvc", "repro"], repo)
        expect_stages(repro, list(STAGES), "dvc repro from scratch")
        progress(f"  dvc repro from scratch: {repro.seconds:.1f} s, "
                 f"peak {repro.peak_rss / GIB:.2f} GB")
        timings = None if extraction is None else extraction_benchmark(repo, extraction)
        set_params(repo, DETECT_CHANGE)
        detect_change = measure(["dvc", "repro"], repo)
        progress(f"  after a detect change: {detect_change.seconds:.1f} s, "
                 f"ran {detect_change.ran}")
        no_change = measure(["dvc", "repro"], repo)
        progress(f"  with nothing changed: {no_change.seconds:.2f} s, ran {no_change.ran}")
    return repro, detect_change, no_change, timings


def plain_pass(checkout: Checkout) -> Run:
    with checkout.clone() as repo:
        plain = measure([sys.executable, "-c", PLAIN_SCRIPT, *STAGES], repo)
    progress(f"  plain process: {plain.seconds:.1f} s, peak {plain.peak_rss / GIB:.2f} GB")
    return plain


def full_repeat(checkout: Checkout, index: int, extraction: Extraction | None) -> FullRepeat:
    """The dvc and plain runs of one repeat; their order alternates between repeats so a
    drift in machine speed does not always favour the same one."""
    passes = {"dvc": lambda: dvc_pass(checkout, extraction),
              "plain": lambda: plain_pass(checkout)}
    order = ["plain", "dvc"] if index % 2 else ["dvc", "plain"]
    results = {name: passes[name]() for name in order}
    repro, detect_change, no_change, timings = results["dvc"]
    return FullRepeat(repro, detect_change, no_change, results["plain"], timings)


def extraction_benchmark(repo: Path, extraction: Extraction) -> dict:
    """Target 2, on the model and images of a clone where the pipeline has run."""
    progress(f"  extraction: {extraction.images} images, {extraction.repeats} repeats")
    result = subprocess.run(
        [sys.executable, str(EXTRACTION_SCRIPT), "--images", str(extraction.images),
         "--repeats", str(extraction.repeats)],
        cwd=repo, env=environment({"PYTHONPATH": str(repo)}), capture_output=True, text=True)
    if result.returncode != 0:
        raise BenchmarkError(f"{EXTRACTION_SCRIPT.name} failed:\n{result.stderr[-4000:]}")
    timings = json.loads(result.stdout.strip().splitlines()[-1])
    progress(f"  extraction: {statistics.median(timings['per_image_seconds']):.2f} s "
             f"one image at a time, {statistics.median(timings['record_seconds']):.3f} s "
             "batched")
    return timings


# --- target 4: sweeps -----------------------------------------------------------------------

@dataclass
class SweepRepeat:
    sequential_seconds: float
    queued_seconds: float
    threads_seen: dict[int, tuple[str, str | None]]   # pid: (stage, its STAGE_THREADS)


def sequential_sweep(repo: Path, settings: tuple[str, ...]) -> float:
    started = time.perf_counter()
    for setting in settings:
        measure(["dvc", "exp", "run", "-S", setting], repo)
    return time.perf_counter() - started


def experiment_count(repo: Path) -> int:
    """Finished experiments: refs/exps/<2 hex>/<rest of baseline sha>/<name>."""
    refs = git(repo, "for-each-ref", "--format=%(refname)", "refs/exps").split()
    return sum(1 for ref in refs if re.fullmatch(r"refs/exps/[0-9a-f]{2}/[0-9a-f]{38}/[^/]+", ref))


def processes_under(repo: Path) -> tuple[list[psutil.Process], dict[int, str]]:
    """The repo's queue workers, and the stage processes running in its experiment folders."""
    workers, stages = [], {}
    for process in psutil.process_iter(["cmdline", "cwd"]):
        command_line, cwd = process.info["cmdline"] or [], process.info["cwd"] or ""
        if "queue-worker" in command_line and cwd == str(repo):
            workers.append(process)
        elif cwd.startswith(f"{repo}{os.sep}") and stage_of(command_line):
            stages[process.pid] = stage_of(command_line)
    return workers, stages


def wait_for_queue(repo: Path, expected: int) -> dict[int, tuple[str, str | None]]:
    """Poll until `expected` experiments have finished, reading STAGE_THREADS from every
    stage process the workers start; stop if the workers are gone before that."""
    seen: dict[int, tuple[str, str | None]] = {}
    deadline = time.perf_counter() + SWEEP_TIMEOUT_SECONDS
    workers_were_up = False
    while True:
        # Workers first: once they are gone, every result they wrote is visible to git.
        workers, stages = processes_under(repo)
        for pid, stage in stages.items():
            if pid not in seen:
                try:
                    seen[pid] = (stage, psutil.Process(pid).environ().get(THREADS_VARIABLE))
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    pass  # it ended before its environment could be read
        if experiment_count(repo) >= expected:
            return seen
        workers_were_up = workers_were_up or bool(workers)
        if (workers_were_up and not workers) or time.perf_counter() > deadline:
            status = subprocess.run(["dvc", "queue", "status"], cwd=repo, capture_output=True,
                                    text=True).stdout
            raise BenchmarkError(f"queued experiments did not finish in {repo}:\n{status}")
        time.sleep(QUEUE_POLL_SECONDS)


def stop_workers(repo: Path) -> None:
    """Shut the repo's queue workers down (they idle a minute otherwise) before its clone
    is removed; kill any still up after WORKER_EXIT_SECONDS."""
    workers, _ = processes_under(repo)
    subprocess.run(["dvc", "queue", "stop"], cwd=repo, capture_output=True)
    _, alive = psutil.wait_procs(workers, timeout=WORKER_EXIT_SECONDS)
    for worker in alive:
        worker.kill()


def queued_sweep(repo: Path,
                 settings: tuple[str, ...]) -> tuple[float, dict[int, tuple[str, str | None]]]:
    for setting in settings:
        measure(["dvc", "exp", "run", "--queue", "-S", setting], repo)
    started = time.perf_counter()
    try:
        # Not a pipe: the workers it leaves running would hold it open until they exit.
        subprocess.run(["dvc", "queue", "start", "-j", str(SWEEP_JOBS)], cwd=repo, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=environment({THREADS_VARIABLE: SWEEP_THREADS}))
        seen = wait_for_queue(repo, len(settings))
        seconds = time.perf_counter() - started
    finally:
        stop_workers(repo)
    return seconds, seen


def sweep_repeat(checkout: Checkout, settings: tuple[str, ...], index: int) -> SweepRepeat:
    """Both ways from the same committed baseline, each in its own copy (so neither finds
    the other's results in the run cache); their order alternates between repeats."""
    with checkout.clone() as repo:
        measure(["dvc", "repro"], repo)
        commit(repo, "baseline")
        twin = repo.parent / "twin"
        shutil.copytree(repo, twin, symlinks=True)
        if index % 2:
            queued_seconds, seen = queued_sweep(twin, settings)
            sequential_seconds = sequential_sweep(repo, settings)
        else:
            sequential_seconds = sequential_sweep(repo, settings)
            queued_seconds, seen = queued_sweep(twin, settings)
    progress(f"  sequential {sequential_seconds:.1f} s, queued -j {SWEEP_JOBS} "
             f"{queued_seconds:.1f} s")
    return SweepRepeat(sequential_seconds, queued_seconds, seen)


# --- report ---------------------------------------------------------------------------------

@dataclass
class Row:
    target: str
    goal: str
    median: str
    runs: str
    passed: bool | None
    command: str


def number_row(target: str, values: list[float], unit: str, command: str,
               comparison: str | None = None, bound: float | None = None,
               digits: int = 1) -> Row:
    """A row of measured numbers: their median, each run, and the median against the goal."""
    middle = statistics.median(values)
    shown = lambda value: f"{value:.{digits}f}{unit}"  # noqa: E731
    passed = None if comparison is None else COMPARISONS[comparison](middle, bound)
    goal = "(reported)" if comparison is None else f"{comparison} {bound:g}{unit}"
    return Row(target, goal, shown(middle), ", ".join(shown(value) for value in values),
               passed, command)


def check_row(target: str, observed: list[str], expected: str, command: str) -> Row:
    return Row(target, expected, observed[0] if len(set(observed)) == 1 else "varies",
               "; ".join(observed), all(each == expected for each in observed), command)


def stage_list(run: Run) -> str:
    return ", ".join(run.ran) or "none"


def threads_observation(sweeps: list[SweepRepeat]) -> str:
    seen = [entry for sweep in sweeps for entry in sweep.threads_seen.values()]
    values = sorted({str(value) for _, value in seen})
    stages = sorted({stage for stage, _ in seen}, key=STAGES.index)
    return (f"{THREADS_VARIABLE}={'/'.join(values) or 'none'} in {len(seen)} stage processes "
            f"({', '.join(stages)})")


def full_rows(repeats: list[FullRepeat], extraction: dict) -> list[Row]:
    loop_ratio = lambda key: [loop / other for loop, other  # noqa: E731
                              in zip(extraction["per_image_seconds"], extraction[key])]
    per_image = [1000 * seconds / extraction["images"]
                 for seconds in extraction["per_image_seconds"]]
    extraction_command = (f"`PYTHONPATH=. python {EXTRACTION_SCRIPT.relative_to(ROOT)} "
                          f"--images {extraction['images']}` in a full clone after its run")
    change = f"`dvc repro` after the full run, with {DETECT_CHANGE_SHOWN}"
    return [
        number_row("1. Full MNIST `dvc repro` from scratch: wall time",
                   [r.repro.seconds for r in repeats], " s", "`dvc repro` in a full clone",
                   "<", 240),
        number_row("1. Full MNIST `dvc repro`: peak RSS of the process tree",
                   [r.repro.peak_rss / GIB for r in repeats], " GB",
                   "`dvc repro` in a full clone", "<", 3, digits=2),
        number_row("1. Plain process, every stage's main() in order: wall time",
                   [r.plain.seconds for r in repeats], " s",
                   "`python -c \"$PLAIN\" " + " ".join(STAGES) + "` in a full clone"),
        number_row("1. Plain process: peak RSS",
                   [r.plain.peak_rss / GIB for r in repeats], " GB", "the same", digits=2),
        number_row("1. Ratio dvc repro / plain process (run by run)",
                   [r.repro.seconds / r.plain.seconds for r in repeats], "",
                   "the two above", "<=", 1.15, digits=3),
        number_row(f"2. Extraction speed-up per image, `stages.extract.record` (batch "
                   f"{extraction['batch_size']}, Parquet written) vs `predict(image[None])` "
                   f"per image, {extraction['images']} images, both warmed up",
                   loop_ratio("record_seconds"), "x", extraction_command, ">=", 500,
                   digits=0),
        number_row("2. The same, with `record`'s probe built and traced inside the timing "
                   "(the loop still warm)", loop_ratio("record_cold_seconds"), "x",
                   "the same", digits=0),
        number_row("2. Forward pass only: warm `network.LayerProbe` vs `predict` per image",
                   loop_ratio("forward_seconds"), "x", "the same", digits=0),
        number_row("2. Article's loop: time per image", per_image, " ms", "the same"),
        check_row("3. Stages re-run after a `detect.*` change",
                  [stage_list(r.detect_change) for r in repeats],
                  ", ".join(DOWNSTREAM_OF_DETECT), change),
        number_row("3. `dvc repro` after a `detect.*` change: share of the full run",
                   [100 * r.detect_change.seconds / r.repro.seconds for r in repeats], "%",
                   "the same, over its clone's full run", "<", 15),
        number_row("3. `dvc repro` after a `detect.*` change: wall time",
                   [r.detect_change.seconds for r in repeats], " s", "the same"),
        number_row("3. `dvc repro` with nothing changed: wall time",
                   [r.no_change.seconds for r in repeats], " s", "`dvc repro` once more",
                   "<", 3, digits=2),
        check_row("3. Stages re-run with nothing changed",
                  [stage_list(r.no_change) for r in repeats], "none", "the same"),
    ]


def sweep_rows(sweeps: list[SweepRepeat], mode: Mode) -> list[Row]:
    count = len(mode.sweep_settings)
    experiments = ", ".join(f"`-S {setting}`" for setting in mode.sweep_settings)
    queued = (f"`dvc exp run --queue` with each of {experiments}, then "
              f"`{THREADS_VARIABLE}={SWEEP_THREADS} dvc queue start -j {SWEEP_JOBS}`, timed "
              "until every experiment's git ref exists, in a sweep clone")
    observation = threads_observation(sweeps)
    return [
        number_row(f"4. Sweep of {count} experiments, one after the other",
                   [s.sequential_seconds for s in sweeps], " s",
                   f"`dvc exp run` with each of {experiments} in a sweep clone"),
        number_row(f"4. Sweep of {count} experiments, queued, `{THREADS_VARIABLE}="
                   f"{SWEEP_THREADS}` and -j {SWEEP_JOBS}",
                   [s.queued_seconds for s in sweeps], " s", queued),
        number_row("4. Sweep speed-up, one after the other / queued (run by run)",
                   [s.sequential_seconds / s.queued_seconds for s in sweeps], "x",
                   "the two above", digits=2),
        Row(f"4. {THREADS_VARIABLE} reaches the queue's stage processes",
            f"{THREADS_VARIABLE}={SWEEP_THREADS} in every one", observation, observation,
            all(sweep.threads_seen for sweep in sweeps) and all(
                value == SWEEP_THREADS for sweep in sweeps
                for _, value in sweep.threads_seen.values()),
            "psutil reads the environment of every `python -m stages.*` process under the "
            "queued sweep clone"),
    ]


def setup_lines(revision: str, npz: Path, mode: Mode) -> list[str]:
    """How the clones the commands run in are made, and the plain process's script."""
    full = {"data.source": "npz", "data.path": str(npz), **flatten(mode.full_params)}
    return [
        f"- *Full clone*: `git clone {ROOT} <dir> && cd <dir> && git checkout {revision} && "
        f"rm dvc.lock`, params.yaml set to {shown_params(full)}, committed.",
        f"- *Sweep clone*: the same with {shown_params(flatten(mode.sweep_params))} on the "
        "bundled data, then `dvc repro` and a commit: the baseline. The experiments run one "
        "after the other in one copy of it and queued in another, so neither finds the "
        "other's results in the run cache; the two passes alternate in order.",
        "- `$PLAIN`, one Python process running every stage as `python -m stages.<name>` "
        "would:", "", "```python", PLAIN_SCRIPT.rstrip(), "```", "",
    ]


def shown_params(params: dict[str, object]) -> str:
    return ", ".join(f"`{key}: {value}`" for key, value in params.items())


def profile_rows(repeats: list[FullRepeat]) -> list[str]:
    """Median seconds and peak RSS per stage in `dvc repro`, beside the plain process's."""
    lines = ["| stage | `dvc repro` s (median) | share of the run | peak RSS GB | plain s |",
             "|---|---|---|---|---|"]
    total = statistics.median(r.repro.seconds for r in repeats)
    accounted = 0.0
    for stage in STAGES:
        # A stage shorter than one poll can go unseen.
        seen = [r.repro.stages[stage] for r in repeats if stage in r.repro.stages]
        if not seen:
            lines.append(f"| {stage} | not seen by the poller | | | |")
            continue
        seconds = statistics.median(each.seconds for each in seen)
        peak = statistics.median(each.peak_rss for each in seen) / GIB
        plain = statistics.median(r.plain_stage_seconds.get(stage, 0.0) for r in repeats)
        accounted += seconds
        lines.append(f"| {stage} | {seconds:.1f} | {100 * seconds / total:.0f}% | {peak:.2f} "
                     f"| {plain:.1f} |")
    overhead = total - accounted
    lines.append(f"| dvc itself (start-up, hashing, caching, lock file) | {overhead:.1f} | "
                 f"{100 * overhead / total:.0f}% | | |")
    return lines


def verdict(passed: bool | None) -> str:
    return {True: "pass", False: "**FAIL**", None: "—"}[passed]


def machine_lines(start_load: tuple[float, float, float]) -> list[str]:
    memory = psutil.virtual_memory().total / GIB
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    return [f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"- Machine: {os.cpu_count()} cores ({model}), {memory:.1f} GB memory, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
            "- Load average (1, 5, 15 min), other users' work included: "
            f"{shown_load(start_load)} at the start, {shown_load(os.getloadavg())} at the end"]


def shown_load(load: tuple[float, float, float]) -> str:
    return ", ".join(f"{value:.2f}" for value in load)


def render(rows: list[Row], repeats: list[FullRepeat], arguments: argparse.Namespace,
           mode: Mode, revision: str, start_load: tuple[float, float, float],
           elapsed: float) -> str:
    command = " ".join(["python benchmarks/run.py", *sys.argv[1:]])
    lines = ["# Benchmarks", ""]
    if mode is QUICK:
        lines += [f"**Quick smoke mode** ({shown_params(flatten(TINY))}): these numbers "
                  "say nothing about the targets.", ""]
    lines += [f"- Commit: `{revision[:7]}` (clones of it; uncommitted edits are not measured)",
              *machine_lines(start_load),
              f"- Repeats: {arguments.full_repeats} of the full-MNIST runs (targets 1 and 3), "
              f"{arguments.repeats} of the extraction timing and of the sweeps; total "
              f"{elapsed / 60:.1f} min",
              f"- Reproduce everything: `{command}`", "",
              "| target | goal | median | runs | result | command |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {row.target} | {row.goal} | {row.median} | {row.runs} | "
              f"{verdict(row.passed)} | {row.command} |" for row in rows]
    lines += ["", "## How it is measured", "",
              *setup_lines(revision, arguments.npz.resolve(), mode),
              "- Peak memory is the peak of the summed RSS of the command and all its "
              "descendant processes, polled with psutil every 0.1 s; the same poller times "
              "each stage process (the profile below).",
              "- Speed on a shared machine drifts: ratios are taken run by run, and the dvc "
              "and plain runs alternate in order.", "",
              "## Where the time of a full-MNIST `dvc repro` goes", "",
              *profile_rows(repeats), ""]
    return "\n".join(lines)


# --- main -----------------------------------------------------------------------------------

def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=ROOT.parent / "shared/data/mnist.npz",
                        help="a Keras-layout MNIST .npz (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each measurement")
    parser.add_argument("--full-repeats", type=int,
                        help="runs of the full-MNIST measurements (default: --repeats)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: tiny params, 1 epoch, a few images")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    arguments = parser.parse_args()
    arguments.full_repeats = arguments.full_repeats or arguments.repeats
    if not arguments.npz.is_file():
        parser.error(f"--npz {arguments.npz}: no such file")
    return arguments


def main() -> None:
    arguments = parse_arguments()
    mode = QUICK if arguments.quick else FULL
    started, start_load = time.perf_counter(), os.getloadavg()
    # One commit for every clone, however the repository moves on meanwhile.
    revision = git(ROOT, "rev-parse", "HEAD").strip()
    npz_params = {"data": {"source": "npz", "path": str(arguments.npz.resolve())}}
    full = Checkout(revision, merged(npz_params, mode.full_params))
    progress(f"benchmarking commit {revision[:7]} in {mode.name} mode on {os.cpu_count()} "
             "cores")

    repeats = []
    for index in range(arguments.full_repeats):
        progress(f"full MNIST, repeat {index + 1} of {arguments.full_repeats}")
        extraction = Extraction(mode.extraction_images, arguments.repeats)
        repeats.append(full_repeat(full, index, None if index else extraction))
    sweeps = []
    for index in range(arguments.repeats):
        progress(f"sweep, repeat {index + 1} of {arguments.repeats}")
        sweeps.append(sweep_repeat(Checkout(revision, mode.sweep_params), mode.sweep_settings,
                                   index))

    rows = full_rows(repeats, repeats[0].extraction) + sweep_rows(sweeps, mode)
    arguments.output.write_text(render(rows, repeats, arguments, mode, revision, start_load,
                                       time.perf_counter() - started))
    for row in rows:
        progress(f"{verdict(row.passed):>8}  {row.target}: {row.median} (goal {row.goal})")
    progress(f"wrote {arguments.output}")

if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as error:
        sys.exit(f"benchmark failed: {error}")
