"""The Bayes-optimal oracle's metric per active task on a generated customer world.

Prints one JSON line per task: the oracle's metric (ple.metrics: AUC for binary tasks, accuracy for
multiclass, hit@10 for brand_prediction, RMSE for regression) next to the chance level of the same
metric, with the time to generate the world, run the oracle and score all 16 tasks.

    python benchmarks/oracle_metrics.py                              # default profile, 100,000 customers
    python benchmarks/oracle_metrics.py --profile ci --customers 5000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ple import metrics
from ple.data import world as W


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    t0 = time.perf_counter()
    world = W.generate(args.customers, seed=args.seed, profile=args.profile)
    t_gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = W.oracle(world)
    t_oracle = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = metrics.evaluate(world.labels, pred)
    t_eval = time.perf_counter() - t0
    for task, value in scores.items():
        label = np.asarray(world.labels[task])
        print(json.dumps({
            "benchmark": "oracle_metrics", "profile": args.profile, "n_customers": args.customers,
            "seed": args.seed, "task": task, "metric": metrics.metric_name(metrics.task_kind(task)),
            "oracle": round(float(value), 4),
            "chance": round(metrics.task_chance(task, label), 4),
            "generate_s": round(t_gen, 1), "oracle_s": round(t_oracle, 1),
            "evaluate_s": round(t_eval, 2),
        }))


if __name__ == "__main__":
    main()
