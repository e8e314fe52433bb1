"""ple.train under DistributedDataParallel: 2 CPU processes (gloo) against 1 process, same global batch.

The two processes each train on their shard of every global batch (the pipeline's distributed
split: `PreparedWorld.stream(..., num_replicas=2, rank=r)`), DDP averages the gradients, adaTT
averages the per-task gradients before the affinity; the single process streams the same global
batches (`num_replicas=1`). The runs must agree to float32 reduction-order noise: per-epoch training
and validation losses within a relative 1e-4, final parameters and the adaTT affinity within 1e-4
(absolute, on values of order 1), and the two processes' parameters bit-identical to each other.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import time

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ple.system import PLESystem, preset
from ple.train import TrainConfig, Trainer, init_distributed

TASKS = ("engagement", "ctr", "churn", "ltv")
GLOBAL_BATCH = 40  # 160 training customers: 4 steps per epoch, 20 rows per process
TOL = 1e-5  # losses (relative) and affinity
LR = 3e-3  # the parameters: within one AdamW step


@functools.lru_cache(maxsize=1)
def prepared_world():
    from ple.data import world as W
    from ple.data.pipeline import PipelineConfig, prepare_world

    world = W.generate(240, seed=0, profile="ci")
    splits = dict(train=np.arange(160), val=np.arange(160, 200), test=np.arange(200, 240))
    return prepare_world(world, PipelineConfig(seed=0, lightgcn_epochs=2, hmm_iter=2, hmm_fit_sequences=24,
                                               gmm_fit_rows=100), splits=splits)


def train(rank: int, world_size: int, data, out: str, port: int) -> None:
    """One process of the run (rank of world_size); writes its records and final state to out."""
    torch.set_num_threads(1)
    if world_size > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
        got = init_distributed("gloo")
        assert got[:2] == (rank, world_size)
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    system = PLESystem(preset("ci", tasks=TASKS, transfer_edges=(), tower_dropout=0.0, **data.dims))
    stream = data.stream("train", GLOBAL_BATCH // world_size, tasks=TASKS, seed=0, num_replicas=world_size, rank=rank)
    cfg = TrainConfig(phase1_epochs=2, phase2_epochs=1, batch_size=GLOBAL_BATCH, eval_batch_size=64, lr=LR,
                      warmup_epochs=0, phase2_warmup_epochs=0, adatt_warmup_epochs=0, adatt_freeze_epoch=1,
                      adatt_grad_interval=1, progress="off", patience=0)
    tr = Trainer.for_system(system, stream, data.tensor_data("val", TASKS), cfg, output_dir=os.path.join(out, f"w{world_size}", f"rank{rank}"))
    records = tr.run()
    torch.save({"records": records, "state": system.state_dict(), "affinity": tr.adatt.computer.affinity.clone()},
               os.path.join(out, f"w{world_size}r{rank}.pt"))
    if world_size > 1:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_two_gloo_processes_match_one_process(tmp_path):
    t0 = time.perf_counter()
    data = prepared_world()
    out = str(tmp_path)
    train(0, 1, data, out, 0)
    mp.spawn(train, args=(2, data, out, free_port()), nprocs=2, join=True)
    one = torch.load(tmp_path / "w1r0.pt", weights_only=False)
    r0, r1 = (torch.load(tmp_path / f"w2r{r}.pt", weights_only=False) for r in (0, 1))
    # the two processes hold the same model (DDP keeps them in step bit for bit)
    assert all(torch.equal(a, b) for a, b in zip(r0["state"].values(), r1["state"].values()))
    # ... which is the single process's model, up to the reduction order of float32 sums
    worst = max(float((a.double() - b.double()).abs().max()) for a, b in zip(one["state"].values(), r0["state"].values())
                if a.is_floating_point())
    assert worst < LR, worst
    assert torch.allclose(one["affinity"], r0["affinity"], atol=TOL)  # adaTT: the averaged per-task gradients
    assert [r["phase"] for r in r0["records"]] == [1, 1, 2]
    for a, b in zip(one["records"], r0["records"]):  # training losses: the mean over the processes' shards
        for key in ("train_loss", "val_loss"):
            for t in TASKS:
                assert abs(a[key][t] - b[key][t]) <= TOL * max(1.0, abs(a[key][t])), (key, t, a[key][t], b[key][t])
    # rank 0 alone writes the metrics and checkpoints
    lines = [json.loads(x) for x in (tmp_path / "w2" / "rank0" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and any((tmp_path / "w2" / "rank0").glob("ckpt-*.pt"))
    assert not (tmp_path / "w2" / "rank1").exists()
    assert time.perf_counter() - t0 < 240  # < 60 s on 2 uncontended cores; generous under shared load
