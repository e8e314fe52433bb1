"""ple.fit: the training engine (masking, aggregation, callbacks, selection, determinism)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ple.checks import ShapeError, TaskError
from ple.fit import (
    Callback,
    History,
    Replicas,
    Task,
    TensorData,
    WeightedSum,
    evaluate,
    fit,
    masked_mean,
    predict,
    replica_name,
)
from ple.mmoe import MMoE, SharedBottom

D = 6
TASKS = (Task("reg", "regression"), Task("bin", "binary"))


def make_data(n: int = 256, seed: int = 0, mask_rate: float = 0.3) -> TensorData:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g)
    reg = (x[:, :1] * 2 - x[:, 1:2]).clone()
    binary = (x[:, 2] + 0.3 * torch.randn(n, generator=g) > 0).float()
    mask = torch.rand(n, generator=g) > mask_rate
    return TensorData(x, {"reg": reg, "bin": binary}, {"bin": mask})


def make_model(seed: int = 0, cls=MMoE) -> nn.Module:
    torch.manual_seed(seed)
    return cls(D, 2, num_experts=3, expert_dims=(8,), tower_dims=(4,)) if cls is MMoE else cls(D, 2, (8,), (4,))


def params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_masked_mean_value_and_empty_case():
    loss = torch.tensor([1.0, 2.0, 3.0, 10.0], requires_grad=True)
    mask = torch.tensor([True, True, True, False])
    assert masked_mean(loss, mask).item() == pytest.approx(2.0)
    assert masked_mean(loss).item() == pytest.approx(4.0)
    weighted = torch.tensor([1.0, 0.0, 3.0, 0.0])
    assert masked_mean(loss, weighted).item() == pytest.approx((1 + 9) / 4)
    nan_loss = torch.tensor([1.0, float("nan")], requires_grad=True)
    out = masked_mean(nan_loss, torch.tensor([True, False]))
    out.backward()
    assert out.item() == 1.0 and torch.equal(nan_loss.grad, torch.tensor([1.0, 0.0]))
    empty = masked_mean(loss, torch.zeros(4, dtype=torch.bool))
    empty.backward()
    assert empty.item() == 0.0
    with pytest.raises(ShapeError, match=r"mask has shape \[3\]; expected \[4\]"):
        masked_mean(loss, mask[:3])


def test_unlabelled_samples_change_nothing():
    data = make_data()
    other = make_data()
    unlabelled = ~other.masks["bin"]
    other.targets["bin"] = torch.where(unlabelled, torch.full_like(other.targets["bin"], float("nan")), other.targets["bin"])
    runs = []
    for d in (data, other):
        model = make_model()
        fit(model, d, tasks=TASKS, epochs=2, batch_size=32, lr=1e-2)
        runs.append(params(model))
    assert torch.equal(runs[0], runs[1])


def test_all_masked_task_gets_zero_loss_and_no_gradient():
    data = make_data()
    data.masks["bin"] = torch.zeros(len(data), dtype=torch.bool)
    seen = []

    class Grab(Callback):
        def after_backward(self, state):
            seen.append(state.losses["bin"].item())
            for p in state.model.towers[1].parameters():
                assert p.grad is None or torch.count_nonzero(p.grad) == 0

    model = make_model()
    before = params(model.towers[1])
    hist = fit(model, data, tasks=TASKS, epochs=1, batch_size=64, callbacks=[Grab()])
    assert seen and all(v == 0.0 for v in seen)
    assert hist.records[0]["train_loss"]["bin"] == 0.0
    assert torch.equal(before, params(model.towers[1]))


def test_deterministic_under_a_seed():
    out = []
    for seed in (3, 3, 4):
        model = make_model()
        hist = fit(model, make_data(), make_data(128, seed=1), tasks=TASKS, epochs=2, batch_size=32, seed=seed)
        out.append((params(model), hist.val_metric()))
    assert torch.equal(out[0][0], out[1][0]) and (out[0][1] == out[1][1]).all()
    assert not torch.equal(out[0][0], out[2][0])


def test_dropout_is_seeded_and_global_rng_restored():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = SharedBottom(D, 2, (8,), (4,), dropout=0.3)
        fit(model, make_data(), tasks=TASKS, epochs=1, batch_size=32, seed=1)
        runs.append(params(model))
    assert torch.equal(runs[0], runs[1])
    model = make_model()
    torch.manual_seed(11)
    state = torch.random.get_rng_state()
    fit(model, make_data(), tasks=TASKS, epochs=1, batch_size=32)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_weight_zero_gives_that_task_head_no_gradient():
    model = make_model()
    towers = [params(t) for t in model.towers]
    fit(model, make_data(), tasks=TASKS, epochs=2, batch_size=32, aggregate=WeightedSum({"bin": 0.0}))
    assert torch.equal(towers[1], params(model.towers[1]))
    assert not torch.equal(towers[0], params(model.towers[0]))


def test_learnt_aggregator_parameters_join_the_optimizer():
    class LogWeights(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_w = nn.Parameter(torch.zeros(2))

        def forward(self, losses, state):
            return sum(torch.exp(-s) * loss + s for s, loss in zip(self.log_w, losses.values()))

    agg = LogWeights()
    fit(make_model(), make_data(), tasks=TASKS, epochs=2, batch_size=32, aggregate=agg, lr=1e-2)
    assert torch.count_nonzero(agg.log_w.detach()) == 2


def test_callback_stop_and_gradient_zeroing():
    class StopAfterTwo(Callback):
        def on_epoch_end(self, state):
            state.stop = state.epoch >= 2

    hist = fit(make_model(), make_data(), tasks=TASKS, epochs=10, batch_size=64, callbacks=[StopAfterTwo()])
    assert len(hist) == 2 and list(hist.epochs) == [1, 2]

    class Freeze(Callback):
        def after_backward(self, state):
            for p in state.model.parameters():
                p.grad = None

    model = make_model()
    before = params(model)
    fit(model, make_data(), tasks=TASKS, epochs=2, batch_size=64, callbacks=[Freeze()])
    assert torch.equal(before, params(model))


def test_best_epoch_selection_follows_the_metric():
    val_scores = iter([0.5, 0.9, 0.7, 0.8])
    rmse = iter([3.0, 2.0, 1.0, 4.0])
    tasks = (
        Task("reg", "regression", metric=lambda y, p: next(rmse), higher_is_better=False),
        Task("bin", "binary", metric=lambda y, p: next(val_scores)),
    )
    hist = fit(make_model(), make_data(), make_data(64, 2), tasks=tasks, epochs=4, batch_size=64,
               monitor="bin", keep_best=True)
    assert hist.best_epoch == {"reg": 3, "bin": 2} and hist.best == {"reg": 1.0, "bin": 0.9}
    assert hist.best_epoch_overall == 2 and hist.best_state is not None
    assert hist.val_metric().shape == (4, 2) and hist.train_loss().shape == (4, 2)


def test_keep_best_restores_the_best_state():
    calls = iter([0.1, 0.9, 0.2])
    tasks = (TASKS[0], Task("bin", "binary", metric=lambda y, p: next(calls)))
    snapshots = []

    class Snap(Callback):
        def on_epoch_end(self, state):
            snapshots.append(params(state.model))

    model = make_model()
    hist = fit(model, make_data(), make_data(64, 2), tasks=tasks, epochs=3, batch_size=64, monitor="bin",
               keep_best=True, callbacks=[Snap()])
    assert hist.best_epoch_overall == 2 and torch.equal(params(model), snapshots[1])


def test_streamed_batches_equal_tensor_data():
    data = make_data()

    class Stream:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(7)

        def __iter__(self):
            return data.batches(32, shuffle=True, generator=self.generator)

    a, b = make_model(), make_model()
    ha = fit(a, data, list(make_data(64, 2).batches(20)), tasks=TASKS, epochs=2, batch_size=32, seed=7)
    hb = fit(b, Stream(), make_data(64, 2), tasks=TASKS, epochs=2, batch_size=32, seed=7)
    assert torch.equal(params(a), params(b))
    assert ha.val_metric() == pytest.approx(hb.val_metric(), rel=1e-6)  # batched eval: rounding only


def test_engine_step_equals_a_hand_written_step_float64():
    data = make_data(64)
    model = make_model().double()
    ref = make_model().double()
    d64 = TensorData(data.inputs[0].double(), {k: v.double() for k, v in data.targets.items()}, data.masks)
    fit(model, d64, tasks=TASKS, epochs=1, batch_size=64, lr=1e-2, optimizer=lambda p: torch.optim.SGD(p, lr=0.1))
    x, reg, binary, mask = d64.inputs[0], d64.targets["reg"], d64.targets["bin"], d64.masks["bin"]
    out = ref(x)
    loss = ((out[0] - reg) ** 2).mean() + nn.functional.binary_cross_entropy_with_logits(out[1][mask, 0], binary[mask])
    loss.backward()
    with torch.no_grad():
        for p in ref.parameters():
            p -= 0.1 * p.grad
    assert torch.allclose(params(model), params(ref), atol=1e-12, rtol=0)


def test_predict_and_evaluate():
    model = make_model()
    data = make_data()
    out = predict(model, data.inputs[0], tasks=TASKS)
    assert set(out) == {"reg", "bin"} and out["reg"].shape == (256, 1)
    assert set(predict(model, data)) == {"0", "1"}
    scores = evaluate(model, data, TASKS)
    assert 0.0 <= scores["bin"] <= 1.0 and scores["reg"] > 0
    keep = data.masks["bin"]
    p = torch.sigmoid(out["bin"][keep, 0])
    from sklearn.metrics import roc_auc_score

    assert scores["bin"] == pytest.approx(roc_auc_score(data.targets["bin"][keep].numpy(), p.numpy()))
    assert scores["reg"] == pytest.approx(math.sqrt(((out["reg"] - data.targets["reg"]) ** 2).mean().item()), rel=1e-5)


def test_errors_name_the_problem():
    data = make_data()
    bad = TensorData(data.inputs, {**data.targets, "ctr": data.targets["bin"]})
    with pytest.raises(TaskError, match=r"targets has unknown tasks \['ctr'\]"):
        fit(make_model(), bad, tasks=TASKS, epochs=1)
    with pytest.raises(TaskError, match=r"targets has no entry for tasks \['bin'\]"):
        fit(make_model(), TensorData(data.inputs, {"reg": data.targets["reg"]}), tasks=TASKS, epochs=1)
    wrong = TensorData(data.inputs, {"reg": data.targets["reg"][:, 0].repeat(2, 1).T, "bin": data.targets["bin"]})
    with pytest.raises(ShapeError, match=r"prediction has shape \[32, 1\] and target \[32, 2\]"):
        fit(make_model(), wrong, tasks=TASKS, epochs=1, batch_size=32)
    with pytest.raises(ShapeError, match=r"targets\['reg'\] has 10 rows; expected 256"):
        TensorData(data.inputs, {"reg": data.targets["reg"][:10]})
    with pytest.raises(TaskError, match="the model returned 2 outputs; expected one per task"):
        fit(make_model(), TensorData(data.inputs, {"reg": data.targets["reg"]}), tasks=TASKS[:1], epochs=1)
    with pytest.raises(ValueError, match="epochs must be an int >= 1; got 2.5"):
        fit(make_model(), data, tasks=TASKS, epochs=2.5)
    with pytest.raises(ValueError, match="kind must be one of"):
        Task("x", "ranking")
    with pytest.raises(TaskError, match="contrastive task has no default loss"):
        Task("x", "contrastive")
    nan = TensorData(data.inputs[0].clone(), data.targets, data.masks)
    nan.inputs[0][3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"train inputs\[0\] contains NaN or inf \(1 NaN"):
        fit(make_model(), nan, tasks=TASKS, epochs=1)


def test_history_is_plottable():
    hist = fit(make_model(), make_data(), make_data(64, 2), tasks=TASKS, epochs=3, batch_size=64)
    assert isinstance(hist, History) and hist.tasks == ("reg", "bin")
    assert hist.train_loss().shape == hist.val_loss().shape == hist.val_metric().shape == (3, 2)
    assert hist.seconds().shape == (3,) and (hist.seconds() > 0).all()
    assert hist.train_loss()[-1, 0] < hist.train_loss()[0, 0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_metrics():
    data = make_data().to("cuda")
    model = make_model().cuda()
    hist = fit(model, data, data, tasks=TASKS, epochs=2, batch_size=64)
    assert hist.records[-1]["val_metric"]["bin"] > 0.5
    scores = evaluate(model, data, TASKS)
    cpu = evaluate(model.cpu(), make_data(), TASKS)
    assert scores["bin"] == pytest.approx(cpu["bin"], abs=1e-6)
    assert all(v.device.type == "cpu" for v in predict(model.cuda(), data, tasks=TASKS).values())


@pytest.mark.parametrize("cls", [SharedBottom, MMoE])
def test_replicas_follow_separate_runs_step_for_step(cls):
    """R replicas trained as one `Replicas` model equal R separate fit runs (float64)."""
    R, N = 3, 96
    x = torch.randn(R, N, D, dtype=torch.float64)
    y = torch.randn(R, N, 2, dtype=torch.float64)
    tasks = (Task("a", "regression"), Task("b", "regression"))
    alone = [make_model(r, cls).double() for r in range(R)]
    together = [make_model(r, cls).double() for r in range(R)]
    hists = [fit(m, TensorData(x[r, :64], {"a": y[r, :64, :1], "b": y[r, :64, 1:]}),
                 TensorData(x[r, 64:], {"a": y[r, 64:, :1], "b": y[r, 64:, 1:]}),
                 tasks=tasks, epochs=3, batch_size=16, lr=1e-2, seed=4) for r, m in enumerate(alone)]
    stacked = Replicas(together, ["a", "b"])
    assert len(list(stacked.parameters())) == len(list(together[0].parameters()))

    def data(rows):
        return TensorData(x[:, rows].transpose(0, 1),
                          {replica_name(t, r): y[r, rows, k : k + 1] for r in range(R) for k, t in enumerate("ab")})

    hist = fit(stacked, data(slice(0, 64)), data(slice(64, None)), tasks=stacked.expand(tasks), epochs=3,
               batch_size=16, lr=1e-2, seed=4)
    stacked.unstack()
    for r in range(R):
        for a, b in zip(alone[r].parameters(), together[r].parameters()):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
        cols = [hist.tasks.index(replica_name(t, r)) for t in "ab"]
        assert hist.val_metric()[:, cols] == pytest.approx(hists[r].val_metric(), rel=1e-9)
    if cls is MMoE:
        _, gates = stacked.call(x[:, 64:].transpose(0, 1), return_gates=True)
        assert gates.shape == (32, R, 2, 3)


def test_replicas_reject_mixed_models():
    with pytest.raises(ValueError, match="models must share one architecture"):
        Replicas([make_model(0), make_model(0, SharedBottom)], ["a", "b"])
    with pytest.raises(ValueError, match="models is empty"):
        Replicas([], ["a"])


def test_scheduler_factory_clipping_and_progress():
    lrs = []

    class LR(Callback):
        def on_epoch_end(self, state):
            lrs.append(state.optimizer.param_groups[0]["lr"])

    fit(make_model(), make_data(), tasks=TASKS, epochs=3, batch_size=64, lr=0.1, progress=True,
        scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5), callbacks=[LR()])
    assert lrs == pytest.approx([0.05, 0.025, 0.0125])

    norms = []

    class Norm(Callback):
        def on_step_end(self, state):
            norms.append(float(torch.cat([p.grad.reshape(-1) for p in state.model.parameters()
                                          if p.grad is not None]).norm()))

    fit(make_model(), make_data(), tasks=TASKS, epochs=1, batch_size=64, grad_clip=1e-3, callbacks=[Norm()])
    assert max(norms) <= 1e-3 * (1 + 1e-4)


def test_aux_output_is_added_to_the_loss_and_autocast_runs():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_model()

        def forward(self, x):
            out = self.body(x)
            return out, 10.0 * sum(p.square().sum() for p in self.body.gates.parameters())

    totals = []

    class Grab(Callback):
        def on_step_end(self, state):
            totals.append((state.loss.item(), sum(v.item() for v in state.losses.values()), state.aux.item()))

    model = WithAux()
    fit(model, make_data(), tasks=TASKS, epochs=1, batch_size=64, returns_aux=True, callbacks=[Grab()])
    assert all(t == pytest.approx(s + a, rel=1e-6) for t, s, a in totals)
    assert set(predict(model, make_data(), tasks=TASKS, returns_aux=True)) == {"reg", "bin"}
    hist = fit(make_model(), make_data(), tasks=TASKS, epochs=1, batch_size=64, autocast=torch.bfloat16)
    assert math.isfinite(hist.records[0]["train_total"])


def test_mapping_aux_adds_only_its_loss_entry():
    class WithDiagnostics(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_model()

        def forward(self, x):
            penalty = 10.0 * sum(p.square().sum() for p in self.body.gates.parameters())
            return self.body(x), {"loss": penalty, "gates": torch.full((x.shape[0], 3), 1e6)}

    seen = []

    class Grab(Callback):
        def on_step_end(self, state):
            task_sum = sum(v.item() for v in state.losses.values())
            seen.append((state.loss.item(), task_sum, state.aux["loss"].item()))

    fit(WithDiagnostics(), make_data(), tasks=TASKS, epochs=1, batch_size=64, returns_aux=True,
        callbacks=[Grab()])
    # the diagnostic entry (huge) is not in the loss; the "loss" entry is
    assert all(t == pytest.approx(s + a, rel=1e-6) for t, s, a in seen)


def test_ready_optimizer_keeps_its_groups_and_gains_the_aggregators():
    model = make_model()
    gate_ids = {id(p) for p in model.gates.parameters()}
    rest = [p for p in model.parameters() if id(p) not in gate_ids]
    opt = torch.optim.SGD([{"params": rest, "lr": 0.1}, {"params": list(model.gates.parameters()), "lr": 0.0}])

    class Learnt(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(2))

        def forward(self, losses, state=None):
            return sum(torch.exp(-self.w[i]) * losses[t] + self.w[i] for i, t in enumerate(losses))

    agg = Learnt()
    before = [p.detach().clone() for p in model.gates.parameters()]
    fit(model, make_data(), tasks=TASKS, epochs=1, batch_size=64, optimizer=opt, aggregate=agg)
    # lr 0 for the gates: they did not move; the aggregator's parameter joined and learnt
    assert all(torch.equal(b, p) for b, p in zip(before, model.gates.parameters()))
    assert len(opt.param_groups) == 3 and not torch.equal(agg.w.detach(), torch.zeros(2))


def test_step_runs_losses_and_aggregation_with_validation_off():
    from ple import checks

    seen = []

    def aggregate(losses, state):
        seen.append(checks.validation_enabled())
        return sum(losses.values())

    fit(make_model(), make_data(), tasks=TASKS, epochs=1, batch_size=128, aggregate=aggregate)
    assert seen and not any(seen)
    seen.clear()
    fit(make_model(), make_data(), tasks=TASKS, epochs=1, batch_size=128, aggregate=aggregate,
        validate_inputs=True)
    assert seen and all(seen)


def test_a_callback_can_swap_the_aggregation():
    class DropBinaryFromEpoch2(Callback):
        def on_epoch_start(self, state):
            if state.epoch == 2:
                state.aggregate = WeightedSum({"bin": 0.0})

    class GradNorms(Callback):
        def after_backward(self, state):
            g = [p.grad for p in state.model.towers[1].parameters() if p.grad is not None]
            norms.setdefault(state.epoch, []).append(float(sum(x.abs().sum() for x in g)) if g else 0.0)

    norms: dict[int, list[float]] = {}
    fit(make_model(), make_data(), tasks=TASKS, epochs=3, batch_size=32,
        callbacks=[DropBinaryFromEpoch2(), GradNorms()])
    # the binary tower gets gradient in epoch 1 only: from epoch 2 its loss weight is 0
    assert sorted(norms) == [1, 2, 3]
    assert min(norms[1]) > 0 and max(norms[2] + norms[3]) == 0.0


def test_masked_mean_of_an_empty_batch_without_mask_is_zero():
    x = torch.zeros(0, requires_grad=True)
    out = masked_mean(x)
    assert float(out.detach()) == 0.0
    out.backward()
    assert float(x.grad.abs().sum()) == 0.0


# ---------------------------------------------------------------- resume, dropped steps, scaler, OOM
class _Snapshot(Callback):
    """Saves everything at step `at` (on_step_end) and, given a snapshot, restores it (resume)."""

    def __init__(self, at: int | None = None, restore: dict | None = None):
        self.at, self.restore, self.saved = at, restore, None

    def on_fit_start(self, state):
        if self.restore is not None:
            r = self.restore
            state.model.load_state_dict(r["model"])
            state.optimizer.load_state_dict(r["optimizer"])
            state.epoch, state.step = r["epoch"] - 1, r["step"]
            torch.set_rng_state(r["rng"])

    def on_epoch_start(self, state):
        if self.restore is not None and state.epoch == self.restore["epoch"]:
            state.generator.set_state(self.restore["generator"])
            state.skip_batches = self.restore["batch_index"]
            state.epoch_sum.copy_(self.restore["epoch_sum"])
            state.epoch_batches = self.restore["epoch_batches"]
            self.restore = None
        self.generator = state.generator.get_state()

    def on_step_end(self, state):
        if state.step == self.at:
            self.saved = dict(model={k: v.clone() for k, v in state.model.state_dict().items()},
                              optimizer=__import__("copy").deepcopy(state.optimizer.state_dict()),
                              epoch=state.epoch, step=state.step, rng=torch.get_rng_state(),
                              generator=self.generator, batch_index=state.batch_index,
                              epoch_sum=state.epoch_sum.clone(), epoch_batches=state.epoch_batches)


def test_fit_resumes_mid_epoch_bit_identically():
    data = make_data(200)
    kw = dict(tasks=TASKS, epochs=3, batch_size=32, seed=3)
    full = make_model(1)
    snap = _Snapshot(at=10)  # 7 batches per epoch: step 10 is mid epoch 2
    h_full = fit(full, data, **kw, callbacks=[snap])
    assert snap.saved["epoch"] == 2 and 0 < snap.saved["batch_index"] < 7
    resumed = make_model(5)
    h_res = fit(resumed, data, **kw, callbacks=[_Snapshot(restore=snap.saved)])
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert [r["epoch"] for r in h_res.records] == [2, 3]
    assert h_res.records[0]["train_total"] == h_full.records[1]["train_total"]


def test_fit_drops_a_step_a_callback_rejects():
    class NonFinite(Callback):
        def after_backward(self, state):
            state.skip_step = not bool(torch.isfinite(state.loss))

    class Poison(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = make_model(0), 0

        def forward(self, x):
            self.calls += 1
            out = self.inner(x)
            return [o * float("nan") for o in out] if self.calls == 3 else out

    model = Poison()
    seen = []

    class Steps(Callback):
        def on_epoch_end(self, state):
            seen.append((state.step, state.skipped_steps, state.epoch_batches))

    h = fit(model, make_data(128), tasks=TASKS, epochs=1, batch_size=32, callbacks=[NonFinite(), Steps()])
    assert seen == [(3, 1, 3)]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert math.isfinite(h.records[0]["train_total"])


def test_fit_skips_an_out_of_memory_batch_only_when_asked():
    class OOMOnce(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.calls = make_model(0), 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return self.inner(x)

    counts = []

    class Count(Callback):
        def on_fit_end(self, state):
            counts.append((state.oom_steps, state.step))

    fit(OOMOnce(), make_data(128), tasks=TASKS, epochs=1, batch_size=32, skip_oom=True, callbacks=[Count()])
    assert counts == [(1, 3)]
    with pytest.raises(torch.OutOfMemoryError):
        fit(OOMOnce(), make_data(128), tasks=TASKS, epochs=1, batch_size=32)


def test_fit_steps_through_a_grad_scaler():
    class UseScaler(Callback):
        def on_fit_start(self, state):
            state.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4)

        def on_fit_end(self, state):
            self.scale = state.scaler.get_scale()

    plain, scaled = make_model(2), make_model(2)
    kw = dict(tasks=TASKS, epochs=1, batch_size=64, grad_clip=1.0, seed=1)
    fit(plain, make_data(128), **kw)
    cb = UseScaler()
    fit(scaled, make_data(128), **kw, callbacks=[cb])
    assert cb.scale == 2.0 ** 4  # finite gradients: the scale was kept
    for a, b in zip(plain.parameters(), scaled.parameters()):  # scaled by a power of 2, unscaled exactly
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_an_aggregator_can_take_the_backward_itself():
    class WithAux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = make_model()

        def forward(self, x):
            return self.body(x), 10.0 * sum(p.square().sum() for p in self.body.gates.parameters())

    class OwnBackward(nn.Module):
        performs_backward = True

        def forward(self, losses, state):
            total = sum(losses.values()) + state.aux_loss
            total.backward()
            return total.detach()

    def run(aggregate):
        torch.manual_seed(0)
        model = WithAux()
        for p in model.parameters():  # stale gradients: the engine must clear them before the hook's backward
            p.grad = torch.full_like(p, 1e3)
        hist = fit(model, make_data(), tasks=TASKS, epochs=2, batch_size=64, returns_aux=True, aggregate=aggregate)
        return model, hist

    plain, h_plain = run(None)
    own, h_own = run(OwnBackward())
    # the same step as the engine's own backward of sum_k L_k + aux, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), own.state_dict().values()))
    assert h_plain.train_loss().tolist() == h_own.train_loss().tolist()
    assert [r["train_total"] for r in h_plain.records] == [r["train_total"] for r in h_own.records]
