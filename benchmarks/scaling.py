"""Trial throughput of one study on 1 and 2 Ray workers (1 torch thread each), bundled model, CPU, on SQLite and
PostgreSQL, with the shortfall from K x explained.

A tiny fixed proxy (rungs 64,128, no pruning) so every trial costs the same. Throughput is taken from the trials'
own timestamps (first start to last completion), so Ray's start and each worker's model load are not counted; the
wall time with them is printed beside it. Target: K workers give at least 0.9 * K times one worker's trials/hour,
which needs K free cores (a busy machine shows less). Prints figures, asserts nothing.

SQLite is a temporary file; PostgreSQL a throwaway local server (``tests/helpers/pg.py``: initdb/pg_ctl on PATH or
under /usr/lib/postgresql/*/bin), skipped when the binaries are missing. ``--storage URL`` runs on that database
instead. Each K gets a fresh database (a fresh study on ``--storage``).

Why K workers give less than K x: trials/hour = K * busy / trial time exactly, so the ratio splits into how busy
the workers were (below 100%: budget claims and Ray calls between trials) and the mean trial time, itself the
trial's compute (sampling_seconds + feature_seconds, from its user attrs) plus the rest: inside the objective (its
wall_seconds attr: suggest, FID statistics, rung writes, pruner) and outside it (artifacts, tell). CPU is sampled
from /proc every 0.5 s (Linux) and read at the trials' timestamps: the driver's cores in the window, the CPU each
worker process got during its trials (below one core: it waited for one), and how many of the machine's cores were
busy. Compute that grows while a worker still has a whole core is slower per CPU second (shared cache or memory
bandwidth), not time-slicing.

    python benchmarks/scaling.py [--trials 6 (per worker)] [--nfe 5] [--workers 1,2] [--storages sqlite,postgres]
                                 [--storage URL] [--json PATH]
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import json
import math
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
import torch

from skipsearch.errors import SkipsearchError
from skipsearch.execution.ray import run_on_ray
from skipsearch.execution.session import open_session
from skipsearch.search.definition import default_study
from skipsearch.settings import Settings
from skipsearch.store import redact_url
from skipsearch.store.records import FINISHED, TrialRecord

STORAGES = ("sqlite", "postgres")
RUNGS = (64, 128)
REPO = Path(__file__).resolve().parents[1]
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _read(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:  # a process that has just exited, or no /proc here
        return None


def _machine_busy() -> float | None:
    """CPU seconds the whole machine has spent busy (not idle or waiting on I/O) since boot, from /proc/stat."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    values = [int(v) for v in text.splitlines()[0].split()[1:9]]  # user .. steal; guest is counted in user
    return (sum(values) - values[3] - values[4]) / _TICK


def _ray_workers() -> dict[int, float]:
    """CPU seconds of every Ray worker process (cut to the pids that ran this run's trials later)."""
    found: dict[int, float] = {}
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        cmdline = _read(f"/proc/{pid}/cmdline")
        # Any Ray worker: one that becomes an actor was titled ray::IDLE before, maybe when the window opened.
        if not cmdline or not cmdline.startswith("ray::"):
            continue
        stat = _read(f"/proc/{pid}/stat")
        if stat:  # the command name may hold spaces: fields start after its closing parenthesis
            fields = stat.rsplit(")", 1)[1].split()
            found[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    return found


def _at(series: list[tuple[float, float]], when: float) -> float | None:
    """A cumulative CPU series read at ``when``: linear between samples, the nearest one outside them."""
    if not series:
        return None
    i = bisect.bisect_left(series, (when, -math.inf))
    if i == 0:
        return series[0][1]
    if i == len(series):
        return series[-1][1]
    (t0, c0), (t1, c1) = series[i - 1], series[i]
    return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1


class CpuSampler:
    """Cumulative CPU seconds sampled every ``period`` seconds in a thread (time.time(), comparable with the trials'
    timestamps), so they can be read at any trial's start and end afterwards."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.own = period, 0.0
        self.driver: list[tuple[float, float]] = []  # this process, less the sampler's own CPU
        self.machine: list[tuple[float, float]] = []
        self.workers: dict[int, list[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        now = time.time()
        self.driver.append((now, time.process_time() - self.own))
        busy = _machine_busy()
        if busy is not None:
            self.machine.append((now, busy))
        for pid, cpu in _ray_workers().items():
            self.workers.setdefault(pid, []).append((now, cpu))
        self.own = time.thread_time()  # the sampler's CPU is not the driver's

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.period):
                self._sample()
                return

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cores(self, series: list[tuple[float, float]], first: float, last: float) -> float | None:
        """Mean cores used between ``first`` and ``last``."""
        a, b = _at(series, first), _at(series, last)
        return None if a is None or b is None or last <= first else (b - a) / (last - first)

    def worker_cpu(self, pid: int | None, start: float, end: float) -> float | None:
        """CPU seconds worker ``pid`` used between ``start`` and ``end`` (None: never sampled)."""
        series = self.workers.get(pid) if pid is not None else None
        a, b = (_at(series, start), _at(series, end)) if series else (None, None)
        return None if a is None or b is None else b - a


@dataclass
class Run:
    """One storage and worker count; seconds are per trial unless named otherwise."""

    storage: str
    workers: int
    trials: int
    trials_per_hour: float
    wall_s: float  # run_on_ray, with Ray's worker start and model loads
    window_s: float  # first trial start to last completion
    trial_s: float  # mean trial time, start to completion
    sampling_s: float
    feature_s: float
    compute_s: float  # sampling + features
    rest_s: float  # trial time less compute: scoring_s + outside_s
    scoring_s: float  # in the objective, not compute: suggest, FID statistics per rung, rung attr writes, pruner
    outside_s: float  # trial time outside the objective: artifacts (grids, heatmap), tell
    first_trial_s: float  # each worker's first trial (imports, first-time caches)
    later_trial_s: float | None  # the others
    busy: float  # trial time / (workers * window)
    driver_cpu_s: float  # during run_on_ray, the sampler's own CPU left out
    driver_cores: float | None  # in the window
    machine_cores: float | None  # busy cores of the whole machine in the window
    other_cores: float | None  # machine less driver and workers' trials: Ray, the database server, anything else
    sampler_cpu_s: float  # what sampling /proc cost the driver (left out of driver_cpu_s)
    worker_cpu_per_trial_s: float | None
    worker_core_share: float | None  # worker CPU / trial time: 1 = a whole core while in a trial
    per_trial: list[dict[str, Any]]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def measure(storage: str, workers: int, trials: int, nfe: int, url: str, scratch: Path) -> Run:
    """Run one fresh study of ``trials`` trials on ``workers`` Ray workers against ``url``; the trials' artifacts
    go to ``scratch`` (else a database URL puts them in the skipsearch home)."""
    definition = default_study("edm").override(nfe=nfe, trials=trials, proxy__rungs=RUNGS,
                                               space_bounds__calibrate=False,
                                               search__pruner="none", search__sampler="random",
                                               search__warm_start=False,
                                               name=f"scaling-{storage}-k{workers}-{int(time.time())}")
    settings = Settings.from_env().replace(artifacts=scratch / f"artifacts-{storage}-k{workers}")
    session = open_session(definition, storage_url=url, device="cpu", settings=settings)
    try:
        with CpuSampler() as sampler:
            cpu, start = time.process_time(), time.perf_counter()
            run_on_ray(session, workers=workers)
            wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        done = [t for t in session.study.get_trials(states=FINISHED) if t.datetime_start and t.datetime_complete]
    finally:
        session.store.close()
    if not done:
        raise SkipsearchError(f"{storage} K={workers}: no trial finished")
    first = min(t.datetime_start.timestamp() for t in done)
    last = max(t.datetime_complete.timestamp() for t in done)
    window = max(last - first, 1e-9)
    times = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    records = [TrialRecord.read(t) for t in done]
    timed = [(r.sampling_seconds, r.feature_seconds, r.wall_seconds, s) for r, s in zip(records, times)
             if r.sampling_seconds is not None and r.feature_seconds is not None and r.wall_seconds is not None]
    sampling, features = _mean([x[0] for x in timed]), _mean([x[1] for x in timed])
    rest = _mean([x[3] - x[0] - x[1] for x in timed])
    scoring, outside = _mean([x[2] - x[0] - x[1] for x in timed]), _mean([x[3] - x[2] for x in timed])
    firsts: dict[str | None, int] = {}
    for i, (t, r) in enumerate(zip(done, records)):
        if r.worker not in firsts or t.datetime_start < done[firsts[r.worker]].datetime_start:
            firsts[r.worker] = i
    later = [s for i, s in enumerate(times) if i not in firsts.values()]
    # Each trial's CPU from its own worker's series, read at the trial's start and end.
    cpus = [sampler.worker_cpu(r.worker_pid, t.datetime_start.timestamp(), t.datetime_complete.timestamp())
            for t, r in zip(done, records)]
    worker_cpu = None if any(c is None for c in cpus) else sum(c for c in cpus if c is not None)
    driver_cores = sampler.cores(sampler.driver, first, last)
    machine_cores = sampler.cores(sampler.machine, first, last)
    others = (None if machine_cores is None or driver_cores is None or worker_cpu is None
              else machine_cores - driver_cores - worker_cpu / window)
    return Run(storage=storage, workers=workers, trials=len(done), trials_per_hour=len(done) / window * 3600,
               wall_s=wall, window_s=window, trial_s=_mean(times), sampling_s=sampling, feature_s=features,
               compute_s=sampling + features, rest_s=rest, scoring_s=scoring, outside_s=outside,
               first_trial_s=_mean([times[i] for i in firsts.values()]),
               later_trial_s=_mean(later) if later else None, busy=sum(times) / (workers * window),
               driver_cpu_s=cpu - sampler.own, driver_cores=driver_cores,
               machine_cores=machine_cores, other_cores=others, sampler_cpu_s=sampler.own,
               worker_cpu_per_trial_s=None if worker_cpu is None else worker_cpu / len(done),
               worker_core_share=None if worker_cpu is None else worker_cpu / sum(times),
               per_trial=[{"number": t.number, "state": t.state.name, "worker_pid": r.worker_pid,
                           "start": t.datetime_start.timestamp() - first, "trial_s": s,
                           "objective_s": r.wall_seconds, "sampling_s": r.sampling_seconds,
                           "feature_s": r.feature_seconds, "worker_cpu_s": c}
                          for t, r, s, c in zip(done, records, times, cpus)])


@contextmanager
def _postgres() -> Iterator[tuple[Any, str]]:
    """A throwaway local server from tests/helpers/pg.py and "", or None and why none could start."""
    # Loaded from its file: the repository's tests/ is a namespace package, and torch-fidelity installs a regular
    # package named "tests", which Python prefers wherever it is on sys.path.
    path = REPO / "tests" / "helpers" / "pg.py"
    try:
        spec = importlib.util.spec_from_file_location("skipsearch_tests_pg", path)
        if spec is None or spec.loader is None:
            raise ImportError(f"no such file {path}")
        pg = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = pg  # dataclasses look their module up there
        spec.loader.exec_module(pg)
    except (ImportError, OSError) as exc:
        yield None, f"cannot import tests/helpers/pg.py: {exc}"
        return
    if pg.find_bin_dir() is None:
        yield None, "no binaries"
        return
    with ExitStack() as stack:
        server, why = None, ""
        try:
            server = stack.enter_context(pg.local_server())
        except (RuntimeError, OSError) as exc:  # initdb or pg_ctl failed
            why = " ".join(str(exc).split())[:300]
        yield server, why


def _label(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgres" if url.startswith("postgres") else url.split(":")[0]


def _share(value: float | None, digits: int = 2) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


def _print_run(run: Run, cores: int) -> None:
    print(f"{run.storage} K={run.workers}: {run.trials_per_hour:7.0f} trials/hour ({run.trials} trials in a "
          f"{run.window_s:.1f} s window; {run.wall_s:.1f} s wall with the workers' start)")
    print(f"    per trial {run.trial_s:.2f} s = compute {run.compute_s:.2f} (sampling {run.sampling_s:.2f} + "
          f"features {run.feature_s:.2f}) + rest {run.rest_s:.2f} (in the objective {run.scoring_s:.2f}: "
          f"suggest, FID statistics, rung writes, pruner; outside it {run.outside_s:.2f}: artifacts, tell)")
    later = "" if run.later_trial_s is None else f", later ones {run.later_trial_s:.2f} s"
    print(f"    a worker's first trial {run.first_trial_s:.2f} s{later}; workers busy {run.busy:.0%} of the "
          f"window (idle between trials: claims, Ray calls)")
    print(f"    driver {run.driver_cpu_s:.1f} CPU s in the run, {_share(run.driver_cores)} cores in the window; "
          f"a worker got {_share(run.worker_core_share)} of a core in a trial "
          f"({_share(run.worker_cpu_per_trial_s)} CPU s per trial); machine {_share(run.machine_cores, 1)} of "
          f"{cores} cores busy, {_share(run.other_cores, 1)} of them other processes (Ray, database, anything else)")


def _why(one: Run, many: Run) -> str:
    """What the growth of the compute time per trial from K=1 to K>1 points at."""
    growth = many.compute_s / one.compute_s - 1
    text = f"{growth:+.0%}"
    if abs(growth) < 0.05:
        return text
    if growth < 0:
        return f"{text}: faster"
    a, b = one.worker_core_share, many.worker_core_share
    if a is None or b is None:
        return f"{text}: slower (no /proc to tell why)"
    if b < a - 0.05:
        return f"{text}: CPU contention, a worker got {b:.2f} of a core vs {a:.2f}"
    return f"{text}: same CPU share ({b:.2f} of a core) but slower per CPU second: shared cache or memory bandwidth"


def summary(one: Run, many: Run, cores: int) -> str:
    """One line: the ratio, its exact split (K x busy ratio x trial time ratio) and what grew."""
    ratio = many.trials_per_hour / one.trials_per_hour
    k = many.workers
    machine = (f"; machine {_share(one.machine_cores, 1)} -> {_share(many.machine_cores, 1)} of {cores} cores busy, "
               f"other processes {_share(one.other_cores, 1)} -> {_share(many.other_cores, 1)}"
               if many.machine_cores is not None else "")
    return (f"{many.storage}: K={many.workers} gives {ratio:.2f}x (target {0.9 * k:.1f}x; = {k} x busy "
            f"{many.busy:.0%}/{one.busy:.0%} x trial time {one.trial_s:.2f}/{many.trial_s:.2f} s); per trial compute "
            f"{one.compute_s:.2f} s -> {many.compute_s:.2f} s ({_why(one, many)}), overhead {one.rest_s:.2f} s -> "
            f"{many.rest_s:.2f} s; driver {_share(one.driver_cores)} -> {_share(many.driver_cores)} cores{machine}")


def _finite(value: Any) -> Any:
    """NaN (no timed trial) as null: JSON has no NaN."""
    return None if isinstance(value, float) and value != value else value


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--workers takes comma-separated integers, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"--workers takes counts of at least 1, got {text!r}")
    return counts


def _storages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = sorted(set(names) - set(STORAGES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"--storages takes {','.join(STORAGES)} (comma-separated), got {text!r}")
    return list(dict.fromkeys(names))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=_positive, default=6, help="trials per worker (default 6)")
    parser.add_argument("--nfe", type=_positive, default=5)
    parser.add_argument("--workers", type=_counts, default=[1, 2], help="comma-separated worker counts (1,2)")
    parser.add_argument("--storages", type=_storages, default=None,
                        help=f"comma-separated, of {','.join(STORAGES)} (default: both)")
    parser.add_argument("--storage", default=None, help="a database URL to run on instead of --storages")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()
    if args.storage and args.storages:
        parser.error("give --storage URL or --storages, not both")
    if args.json is not None and not args.json.parent.is_dir():
        parser.error(f"--json: folder {args.json.parent} does not exist")
    storages = [_label(args.storage)] if args.storage else args.storages or list(STORAGES)
    counts: list[int] = args.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print(f"bundled model, heun NFE {args.nfe}, rungs {','.join(map(str, RUNGS))}, no pruning, {args.trials} trials "
          f"per worker, 1 torch thread per worker, {cores} cores usable (sched_getaffinity), load average "
          f"{os.getloadavg()[0]:.1f}, storage "
          f"{redact_url(args.storage) if args.storage else ' and '.join(storages)}")
    runs: list[Run] = []
    skipped: dict[str, str] = {}
    try:
        # One runtime for all runs (run_on_ray joins it), so its start is paid once and not measured.
        ray.init(num_cpus=max(counts), num_gpus=0, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False)
        with tempfile.TemporaryDirectory() as folder:
            for name in storages:
                with ExitStack() as stack:
                    server = None
                    if name == "postgres" and not args.storage:
                        server, why = stack.enter_context(_postgres())
                        if server is None:
                            print(f"postgres: skipped ({why})")
                            skipped[name] = why
                            continue
                    for k in counts:
                        url = (args.storage or (server.database("scaling") if server is not None
                                                else f"sqlite:///{Path(folder) / f'k{k}.db'}"))
                        runs.append(measure(name, k, args.trials * k, args.nfe, url, Path(folder)))
                        _print_run(runs[-1], cores)
    except SkipsearchError as exc:
        sys.exit(f"scaling.py: error: {exc}")
    finally:
        ray.shutdown()
    lines, ratios = [], {}
    for name in storages:
        mine = {r.workers: r for r in runs if r.storage == name}
        if 1 in mine:
            lines += [summary(mine[1], run, cores) for k, run in mine.items() if k > 1]
            ratios[name] = {str(k): run.trials_per_hour / mine[1].trials_per_hour for k, run in mine.items()}
    if lines:
        print("\n".join(["", *lines]))
    if args.json is not None:
        document = {"nfe": args.nfe, "rungs": list(RUNGS), "trials_per_worker": args.trials, "cores": cores,
                    "load_average": os.getloadavg()[0], "skipped": skipped,
                    "runs": [{k: _finite(v) for k, v in asdict(r).items()} for r in runs], "ratios": ratios}
        for run in document["runs"]:
            run["per_trial"] = [{k: _finite(v) for k, v in t.items()} for t in run["per_trial"]]
        try:
            args.json.write_text(json.dumps(document, indent=2) + "\n")
        except OSError as exc:
            sys.exit(f"scaling.py: error: cannot write --json {args.json}: {exc.strerror or exc}")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
