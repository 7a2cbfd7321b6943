"""Trial overhead: trial wall time vs bare sampling + feature time (prints the ratio; target <= 1.10).

    python benchmarks/overhead.py [--trials 4] [--rungs 200,400] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile

import optuna
import torch

from skipsearch.execution.session import open_session
from skipsearch.proxy.config import ProxyConfig
from skipsearch.search.definition import SearchConfig, StudyDefinition

optuna.logging.set_verbosity(optuna.logging.WARNING)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rungs", default="200,400")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        rungs = tuple(map(int, args.rungs.split(",")))
        definition = StudyDefinition(trials=args.trials, proxy=ProxyConfig(rungs=rungs),
                                     search=SearchConfig(pruner="none"))
        session = open_session(definition, storage_url=f"sqlite:///{folder}/overhead.db")
        session.run(args.trials)
        # Optuna's own start/complete stamps: sampler, storage writes and the artifact upload all count.
        trials = [t for t in session.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        rows = [t.user_attrs for t in trials]
        wall = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in trials)
        bare = sum(r["sampling_seconds"] + r["feature_seconds"] for r in rows)
        print(f"{len(rows)} trials (SQLite storage, artifacts on): trial wall {wall:.1f}s, sampling+features "
              f"{bare:.1f}s, ratio {wall / bare:.3f}")
        session.store.close()


if __name__ == "__main__":
    main()
