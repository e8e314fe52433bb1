"""The ADATT-4 ablation: does adaTT help on the customer world, and is it more than re-weighting?

The full `PLESystem` (``ci`` preset by default) is trained by `ple.train.Trainer` on the customer
world with the planted synergy / conflict pairs on and off, with each loss weighting of
`ple.train.ABLATION_METHODS`: equal, the posts' fixed weights, uncertainty weighting, GradNorm,
DWA, adaTT, uncertainty weighting + adaTT (the posts' system), adaTT's static twin (fixed weights
equal to adaTT's mean effective loss coefficients in the run with the same seed, ADATT-3), and
Jacobian descent on the shared experts with torchjd's UPGrad and PCGrad. Each run is one call of
`ple.train.ablation_run`, the function the chapter's experiment calls; the sizes come from
`ple.train.ablation_profile` ("full" by default, the chapter's papermill parameter set of the
same name). Sizes of the torchjd rows can be reduced separately (``--jd-epochs``), stated in
their lines. One JSON line per (planted, method, seed):

``{"bench": "ablation_adatt", "planted": bool, "method": ..., "seed": ..., "gap": {task: normalised
oracle gap on the validation split}, "mean_gap": ..., "cpu_s_per_epoch": ..., "wall_s_per_epoch": ...,
"customers": ..., "epochs": ..., "tasks": [...], "command": ...}``

The chapter (book/adatt4_training_loop.ipynb) reads the stored lines and forms the paired
differences against equal weighting with their 95 % intervals.

Usage::

    python benchmarks/ablation_adatt.py --out benchmarks/results/ablation_adatt.jsonl
    python benchmarks/ablation_adatt.py --planted on --methods equal,upgrad,pcgrad
    python benchmarks/ablation_adatt.py --customers 20000 --epochs 10 --seeds 10 --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from ple.train import (
    ABLATION_METHODS,
    ABLATION_TASKS,
    ablation_profile,
    ablation_run,
    ablation_world,
)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="full", help="ple.train.ABLATION_PROFILES: small or full")
    p.add_argument("--customers", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--grad-interval", type=int, default=None)
    p.add_argument("--jd-epochs", type=int, default=None, help="epochs of the upgrad / pcgrad rows (default: --epochs)")
    p.add_argument("--methods", default=",".join(ABLATION_METHODS))
    p.add_argument("--preset", default="ci")
    p.add_argument("--planted", default="on,off")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    P = ablation_profile(args.profile, customers=args.customers, epochs=args.epochs, seeds=args.seeds,
                         batch_size=args.batch, lr=args.lr, grad_interval=args.grad_interval)
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(ABLATION_METHODS))
    if unknown:
        p.error(f"--methods has unknown method(s) {unknown}; known: {', '.join(ABLATION_METHODS)}")
    torch.set_num_threads(args.threads)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    command = "python benchmarks/ablation_adatt.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for planted in [x == "on" for x in args.planted.split(",")]:
        prepared = ablation_world(P["customers"], 0, planted)
        for s in range(P["seeds"]):
            coeffs = None
            for method in methods:
                epochs = args.jd_epochs if method in ("upgrad", "pcgrad") and args.jd_epochs else P["epochs"]
                r = ablation_run(method, s, prepared, epochs=epochs, batch_size=P["batch_size"], lr=P["lr"],
                                 grad_interval=P["grad_interval"], coeffs=coeffs, preset_name=args.preset,
                                 device=args.device)
                r.pop("records")
                if method == "adatt":
                    coeffs = r["coeffs"]
                line = dict(bench="ablation_adatt", planted=planted, method=method, seed=s, **r,
                            customers=P["customers"], epochs=epochs, batch=P["batch_size"], lr=P["lr"],
                            profile=args.profile, tasks=list(ABLATION_TASKS), device=str(args.device),
                            command=command)
                text = json.dumps(line)
                print(text, flush=True)
                if out:
                    out.write(text + "\n")
                    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
