"""The package's input contract, one table for every public entry point.

Every callable in a module's ``__all__`` (functions, classes; a class's constructor and, for a
module, its ``forward``) either appears in CASES, where it is fed a bad input of one class

    shape, dtype, nan (NaN / inf), range, empty, hyper (a bad hyperparameter), dup (duplicates)

and must raise a ValueError or TypeError whose message names the argument, or in EXEMPT, with the
reason it takes no user input to check. `test_every_public_callable_is_in_the_table` enumerates
``__all__``, so a new entry point without a row (and so without checks) fails the suite.

The checks run with validation on (the default): the engine `ple.fit.fit` switches off only the
device-syncing ones, inside its training step.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import numpy as np
import pytest
import torch
from contract import CLASSES, Case
from contract_train import CASES as TRAIN_CASES
from contract_train import EXEMPT as TRAIN_EXEMPT

import ple
import ple.adatt
import ple.adatt_transfer
import ple.baselines
import ple.cgc
import ple.clusters
import ple.data.pipeline
import ple.data.world
import ple.evidential
import ple.experts.pool
import ple.fit
import ple.gates
import ple.hmm
import ple.interpret
import ple.layers
import ple.losses
import ple.mmoe
import ple.system
import ple.tasks
import ple.towers

NAN, INF = float("nan"), float("inf")
def _t(*shape, dtype=torch.float32, fill=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=torch.float64).to(dtype)
    if fill is not None:
        x = x.reshape(-1)
        x[0] = fill
        x = x.reshape(shape)
    return x


def _probs(b, c):
    return torch.softmax(_t(b, c), dim=1)


def _nan(*shape):
    return _t(*shape, fill=NAN)


def _world_obs():
    return {"ctr": np.zeros(3)}


C = Case
CASES: list[Case] = [
    # ---------------------------------------------------------------- ple.checks
    C("ple.checks.validation", "dtype", "enabled", lambda f: f(1).__enter__()),
    C("ple.checks.shape_str", "dtype", "x", lambda f: f([1, 2])),
    C("ple.checks.check_int", "hyper", "n", lambda f: f("n", 2.7)),
    C("ple.checks.check_float", "nan", "lr", lambda f: f("lr", NAN)),
    C("ple.checks.check_dropout", "range", "dropout", lambda f: f(1.0)),
    C("ple.checks.check_widths", "hyper", "dims", lambda f: f("dims", [4, 0])),
    C("ple.checks.check_choice", "hyper", "mode", lambda f: f("mode", "x", ("a", "b"))),
    C("ple.checks.check_finite", "nan", "x", lambda f: f(_nan(3), "x")),
    C("ple.checks.check_tensor", "shape", "x", lambda f: f(_t(3), "x", ["B", 2])),
    C("ple.checks.check_features", "dtype", "features", lambda f: f(torch.zeros(2, 3, dtype=torch.long), 3)),
    C("ple.checks.check_dtype", "dtype", "x", lambda f: f(_t(2, dtype=torch.float64), "x", torch.float32)),
    C("ple.checks.check_range", "range", "p", lambda f: f(_t(3) + 1.5, "p", 0, 1)),
    C("ple.checks.check_probabilities", "range", "p", lambda f: f(_t(2, 3), "p")),
    C("ple.checks.check_unique", "dup", "names", lambda f: f("names", ["a", "a"])),
    C("ple.checks.check_array", "nan", "x", lambda f: f([1.0, NAN], "x")),
    # ---------------------------------------------------------------- ple.layers
    C("ple.layers.count_parameters", "dtype", "module", lambda f: f("not a module")),
    C("ple.layers.normalized_entropy", "range", "p", lambda f: f(torch.tensor([2.0, 0.0]))),
    C("ple.layers.MLPBlock", "hyper", "in_dim", lambda f: f(2.7, 3)),
    C("ple.layers.MLPBlock", "shape", "x", lambda f: f(4, 3)(_t(4))),
    C("ple.layers.MLP", "hyper", "hidden_dims", lambda f: f(4, [3, 0])),
    C("ple.layers.MLP", "shape", "x", lambda f: f(4, [3])(_t(4))),
    C("ple.layers.MLP", "dtype", "x", lambda f: f(4, [3])(_t(2, 4, dtype=torch.float64))),
    C("ple.layers.StackedLinear", "hyper", "num_members", lambda f: f(0, 4, 3)),
    C("ple.layers.StackedLinear", "dtype", "x", lambda f: f(2, 4, 3)(_t(2, 4, dtype=torch.float64))),
    C("ple.layers.StackedMLPBlock", "hyper", "dropout", lambda f: f(2, 4, 3, dropout=1.5)),
    C("ple.layers.StackedMLPBlock", "shape", "x", lambda f: f(2, 4, 3)(_t(4))),
    C("ple.layers.StackedMLP", "hyper", "hidden_dims", lambda f: f(2, 4, [])),
    C("ple.layers.StackedMLP", "shape", "x", lambda f: f(2, 4, [3])(_t(2, 5))),
    # ---------------------------------------------------------------- ple.mmoe
    C("ple.mmoe.per_task_out_dims", "hyper", "task_out_dims", lambda f: f([1, 2], 3)),
    C("ple.mmoe.SharedBottom", "hyper", "num_tasks", lambda f: f(4, 0)),
    C("ple.mmoe.SharedBottom", "nan", "x", lambda f: f(4, 2)(_nan(2, 4))),
    C("ple.mmoe.MixtureOfExperts", "hyper", "num_experts", lambda f: f(4, 2, num_experts=2.7)),
    C("ple.mmoe.MMoE", "shape", "x", lambda f: f(4, 2, num_experts=2)(_t(2, 5))),
    C("ple.mmoe.MMoE", "dtype", "x", lambda f: f(4, 2, num_experts=2)(_t(2, 4, dtype=torch.float64))),
    C("ple.mmoe.OMoE", "range", "dropout", lambda f: f(4, 2, num_experts=2, dropout=-0.1)),
    # ---------------------------------------------------------------- ple.fit
    C("ple.fit.Task", "hyper", "kind", lambda f: f("a", "banana")),
    C("ple.fit.Task", "empty", "name", lambda f: f("", "binary")),
    C("ple.fit.binary_loss", "shape", "target", lambda f: f(_t(4), _t(5))),
    C("ple.fit.multiclass_loss", "range", "target", lambda f: f(_t(4, 3), torch.tensor([0, 1, 2, 3]))),
    C("ple.fit.regression_loss", "shape", "target", lambda f: f(_t(4, 2), _t(4, 3))),
    C("ple.fit.masked_mean", "shape", "mask", lambda f: f(_t(4), torch.ones(3))),
    C("ple.fit.Batch", "dtype", "inputs", lambda f: f([1, 2], {}).to("cpu")),
    C("ple.fit.TensorData", "shape", "targets", lambda f: f(_t(4, 2), {"a": _t(5)})),
    C("ple.fit.TensorData", "dtype", "inputs", lambda f: f([[1.0, 2.0]], {"a": _t(1)})),
    C("ple.fit.WeightedSum", "nan", "weights", lambda f: f({"a": NAN})),
    C("ple.fit.fit", "hyper", "epochs", lambda f: f(torch.nn.Linear(2, 1), ple.fit.TensorData(_t(4, 2), {"a": _t(4)}),
                                                  tasks=[ple.fit.Task("a", "regression")], epochs=0)),
    C("ple.fit.predict", "hyper", "batch_size", lambda f: f(torch.nn.Linear(2, 1), _t(4, 2), batch_size=0)),
    C("ple.fit.evaluate", "hyper", "batch_size", lambda f: f(torch.nn.Linear(2, 1), ple.fit.TensorData(_t(4, 2), {"a": _t(4)}),
                                                         [ple.fit.Task("a", "regression")], batch_size=0)),
    C("ple.fit.replica_name", "range", "r", lambda f: f("a", -1)),
    C("ple.fit.Replicas", "dup", "task_names", lambda f: f([torch.nn.Linear(2, 1)] * 2, ["a", "a"])),
    # ---------------------------------------------------------------- ple.data.mmoe_synthetic
    C("ple.data.mmoe_synthetic.orthonormal_pair", "hyper", "input_dim", lambda f: f(1, np.random.default_rng(0))),
    C("ple.data.mmoe_synthetic.task_weights", "range", "correlation", lambda f: f(np.eye(3)[0], np.eye(3)[1], 1.5)),
    C("ple.data.mmoe_synthetic.sinusoid_labels", "shape", "w", lambda f: f(np.zeros((4, 3)), np.zeros(2),
                                                                         np.zeros(2), np.zeros(2))),
    C("ple.data.mmoe_synthetic.make_mmoe_synthetic", "range", "correlation", lambda f: f(10, 2.0)),
    C("ple.data.mmoe_synthetic.make_mmoe_synthetic", "hyper", "n_samples", lambda f: f(2.7, 0.5)),
    # ---------------------------------------------------------------- ple.cgc
    C("ple.cgc.CGC", "hyper", "num_task_experts", lambda f: f(4, 2, num_task_experts=2.7)),
    C("ple.cgc.CGC", "shape", "features", lambda f: f(4, 2)(_t(2, 5))),
    C("ple.cgc.PLE", "hyper", "num_levels", lambda f: f(4, 2, num_levels=0)),
    C("ple.cgc.PLE", "nan", "features", lambda f: f(4, 2)(_nan(2, 4))),
    # ---------------------------------------------------------------- ple.baselines
    C("ple.baselines.SingleTaskModels", "hyper", "num_tasks", lambda f: f(4, 0)),
    C("ple.baselines.SingleTaskModels", "shape", "features", lambda f: f(4, 2)(_t(2, 5))),
    C("ple.baselines.TabularEmbedding", "hyper", "cat_cardinalities", lambda f: f([3, 0], 2)),
    C("ple.baselines.TabularEmbedding", "range", "categorical",
      lambda f: f([3, 2], 1)(torch.tensor([[0, 5]]), _t(1, 1))),
    C("ple.baselines.EncodedModel", "dtype", "encoder", lambda f: f("enc", torch.nn.Linear(2, 1))),
    C("ple.baselines.build_model", "hyper", "name", lambda f: f("banana", 4, 2)),
    C("ple.baselines.ScoreEachEpoch", "dtype", "data", lambda f: f(_t(3, 2))),
    C("ple.baselines.at_best_epoch", "dtype", "history", lambda f: f({"a": 1})),
    C("ple.baselines.mmoe_synthetic_splits", "range", "correlation", lambda f: f(10, 2.0)),
    C("ple.baselines.census_tensor_data", "dtype", "data", lambda f: f(_t(3, 2))),
    C("ple.baselines.census_encoder", "dtype", "splits", lambda f: f(_t(3, 2))),
    # ---------------------------------------------------------------- ple.gates
    C("ple.gates.dim_normalization_scales", "hyper", "expert_dims", lambda f: f([64, 0])),
    C("ple.gates.domain_prior_mask", "hyper", "unknown task", lambda f: f(["nope"])),
    C("ple.gates.domain_prior_mask", "dup", "expert_names", lambda f: f(["ctr"], ["deepfm", "deepfm"])),
    C("ple.gates.domain_prior_bias", "nan", "bias_high", lambda f: f(torch.ones(2, 3, dtype=torch.bool), NAN)),
    C("ple.gates.entropy_regularizer", "range", "entropy_lambda", lambda f: f(_probs(2, 3)[:, None], -1.0)),
    C("ple.gates.entropy_regularizer", "range", "w", lambda f: f(_t(2, 1, 3) + 1.0)),
    C("ple.gates.CGCLayer", "hyper", "num_tasks", lambda f: f(0)),
    C("ple.gates.CGCLayer", "shape", "h_shared", lambda f: f(2, shared_dims=[4, 4], expert_dim=4)(_t(3, 7), _t(3, 2, 1, 4))),
    C("ple.gates.CGCAttention", "range", "entropy_lambda", lambda f: f(2, [4, 4], entropy_lambda=-1.0)),
    C("ple.gates.CGCAttention", "nan", "bias_high", lambda f: f(2, [4, 4], bias_high=NAN)),
    C("ple.gates.TwoStageCGC", "hyper", "expert_dim", lambda f: f(2, [4, 4], expert_dim=0)),
    # ---------------------------------------------------------------- ple.hmm
    C("ple.hmm.gaussian_log_emissions", "shape", "obs", lambda f: f(_hmm(), np.zeros((3, 2)))),
    C("ple.hmm.filtered_posteriors", "nan", "obs", lambda f: f(_hmm(), np.full((1, 3, 2), NAN))),
    C("ple.hmm.is_generator", "shape", "Q", lambda f: f(np.zeros(3))),
    C("ple.hmm.generator_from_transmat", "range", "dt", lambda f: f(np.eye(2), -1.0)),
    C("ple.hmm.generator_from_transmat", "range", "P", lambda f: f(np.full((2, 2), 0.9), 1.0)),
    C("ple.hmm.stationary_distribution", "range", "Q", lambda f: f(np.array([[1.0, -1.0], [2.0, -2.0]]))),
    C("ple.hmm.dynamics_summary", "range", "posterior",
      lambda f: f(np.array([[1.5, 1.5]]), np.array([[-1.0, 1.0], [2.0, -2.0]]), np.zeros(2), 1.0)),
    C("ple.hmm.dynamics_summary", "range", "dt",
      lambda f: f(np.array([[0.5, 0.5]]), np.array([[-1.0, 1.0], [2.0, -2.0]]), np.zeros(2), -1.0)),
    C("ple.hmm.pad_posteriors", "shape", "posterior", lambda f: f(np.zeros(3))),
    C("ple.hmm.match_states", "range", "pred_states", lambda f: f(np.array([0, 1]), np.array([-1, 0]))),
    C("ple.hmm.ModeHMM", "hyper", "n_iter", lambda f: f("journey", 3, n_iter=0)),
    C("ple.hmm.fit_triple_mode", "hyper", "n_states", lambda f: f({"journey": np.zeros((4, 5, 2))}, 0)),
    C("ple.hmm.task_hmm_mode", "hyper", "task", lambda f: f("nope")),
    C("ple.hmm.missing_rows", "shape", "x", lambda f: f(_t(3))),
    C("ple.hmm.HMMProjector", "hyper", "in_dim", lambda f: f(0)),
    C("ple.hmm.HMMProjector", "shape", "x", lambda f: f(16, 8)(_t(2, 15))),
    C("ple.hmm.HMMTripleMode", "hyper", "modes", lambda f: f(["ctr"], ["banana"])),
    # ---------------------------------------------------------------- ple.tasks
    C("ple.tasks.TaskSpec", "empty", "name", lambda f: f("", "binary", 1, "focal", 1.0, "engagement", "journey", (),
                                                           focal_alpha=0.25, focal_gamma=2.0)),
    C("ple.tasks.TaskSpec", "range", "num_classes", lambda f: f("a", "multiclass", 3, "nll", 1.0, "engagement", "journey",
                                                                  (), num_classes=-3)),
    C("ple.tasks.TaskSpec", "shape", "output_dim", lambda f: f("a", "multiclass", 3, "nll", 1.0, "engagement", "journey",
                                                                 (), num_classes=4)),
    C("ple.tasks.TaskSpec", "nan", "weight", lambda f: f("a", "regression", 1, "mse", NAN, "engagement", "journey", ())),
    C("ple.tasks.TaskSpec", "range", "focal_alpha", lambda f: f("a", "binary", 1, "focal", 1.0, "engagement", "journey",
                                                                  (), focal_alpha=5.0, focal_gamma=2.0)),
    C("ple.tasks.TaskSpec", "range", "huber_delta", lambda f: f("a", "regression", 1, "huber", 1.0, "engagement",
                                                                  "journey", (), huber_delta=0.0)),
    C("ple.tasks.TaskSpec", "dup", "domain_experts", lambda f: f("a", "regression", 1, "mse", 1.0, "engagement",
                                                                   "journey", ("hgcn", "hgcn"))),
    C("ple.tasks.check_unique_names", "dup", "duplicate task names", lambda f: f([ple.tasks.TASKS[0]] * 2)),
    C("ple.tasks.get_task", "hyper", "unknown task", lambda f: f("nope")),
    C("ple.tasks.active_tasks", "dtype", "tasks", lambda f: f("ctr")),
    C("ple.tasks.select_tasks", "dup", "duplicate task names", lambda f: f(["ctr", "ctr"])),
    C("ple.tasks.check_transfer_edges", "range", "inverse edge", lambda f: f([("nba", "ctr", "inverse")])),
    C("ple.tasks.tasks_by_hmm_mode", "dtype", "tasks", lambda f: f("ctr")),
    # ---------------------------------------------------------------- ple.metrics
    C("ple.metrics.metric_name", "hyper", "kind", lambda f: f("banana")),
    C("ple.metrics.higher_is_better", "hyper", "kind", lambda f: f("banana")),
    C("ple.metrics.metric", "nan", "y_pred", lambda f: f("binary", [0, 1], [0.5, NAN])),
    C("ple.metrics.metric", "empty", "y_true", lambda f: f("regression", [], [])),
    C("ple.metrics.chance", "range", "y_true", lambda f: f("multiclass", [0, 5], num_classes=3)),
    C("ple.metrics.oracle_gap", "range", "oracle", lambda f: f(0.7, 0.5, 0.6, "binary")),
    C("ple.metrics.task_kind", "hyper", "unknown task", lambda f: f("nope")),
    C("ple.metrics.task_metric", "shape", "y_pred", lambda f: f("life_stage", [0, 1], np.zeros((2, 3)))),
    C("ple.metrics.task_chance", "range", "y_true", lambda f: f("channel", [0, 7])),
    C("ple.metrics.evaluate", "hyper", "labels", lambda f: f({}, {"ctr": [0.5]})),
    # ---------------------------------------------------------------- ple.data.census (no file needed)
    C("ple.data.census.census_file", "hyper", "split", lambda f: f("banana")),
    C("ple.data.census.read_census", "hyper", "split", lambda f: f("banana")),
    C("ple.data.census.census_labels", "range", "rows", lambda f: f(_census_raw(), np.array([-1]))),
    C("ple.data.census.census_feature_columns", "dtype", "leak_free", lambda f: f("yes")),
    C("ple.data.census.load_census", "hyper", "subsample", lambda f: f(subsample=2.7)),
    # ---------------------------------------------------------------- ple.data.world
    C("ple.data.world.make_config", "range", "regime_separation", lambda f: f("ci", regime_separation=INF)),
    C("ple.data.world.make_config", "range", "segment_separation", lambda f: f("ci", segment_separation=1e300)),
    C("ple.data.world.make_config", "hyper", "profile", lambda f: f("banana")),
    C("ple.data.world.check_planted_pairs", "dup", "planted_pairs", lambda f: f((("ctr", "cvr", 1), ("cvr", "ctr", -1)))),
    C("ple.data.world.sample_markov_chain", "range", "trans",
      lambda f: f(np.zeros((2, 3)), np.array([0.5, 0.5]), np.full((2, 2), 0.9))),
    C("ple.data.world.gaussian_state_loglik", "hyper", "steps_per_state",
      lambda f: f(np.zeros((2, 4, 3)), np.zeros((2, 3)), steps_per_state=0)),
    C("ple.data.world.hmm_filter", "range", "init", lambda f: f(np.zeros((2, 3, 2)), np.array([0.9, 0.9]), np.eye(2))),
    C("ple.data.world.h0_persistence", "shape", "series", lambda f: f(np.zeros((2, 2, 2)))),
    C("ple.data.world.count_prominent_peaks", "range", "threshold", lambda f: f(np.zeros((2, 8)), -1.0)),
    C("ple.data.world.histogram_probabilities", "shape", "features", lambda f: f(np.zeros((2, 3)))),
    C("ple.data.world.make_params", "hyper", "seed", lambda f: f(ple.data.world.make_config("ci"), -1)),
    C("ple.data.world.generate", "range", "segment_decision_shift", lambda f: f(10, segment_decision_shift=INF)),
    C("ple.data.world.generate", "hyper", "n_customers", lambda f: f(2.7)),
    C("ple.data.world.load_world", "hyper", "out_dir", lambda f: f("/nonexistent/world")),
    C("ple.data.world.observed_signals", "hyper", "chunk_size", lambda f: f(_small_world(), chunk_size=0)),
    C("ple.data.world.posteriors", "range", "start", lambda f: f(_small_world(), start=-1)),
    C("ple.data.world.oracle", "hyper", "tasks", lambda f: f(_small_world(), tasks=("nope",))),
    C("ple.data.world.tabular_inputs", "hyper", "graph_dim", lambda f: f(_small_world(), graph_dim=0)),
    # ---------------------------------------------------------------- ple.clusters
    C("ple.clusters.GMMClusterRouter", "hyper", "num_clusters", lambda f: f(0)),
    C("ple.clusters.GMMClusterRouter", "nan", "x", lambda f: f(2).fit(np.full((4, 2), NAN))),
    C("ple.clusters.hard_routing", "nan", "cluster_probs", lambda f: f(torch.tensor([[NAN, 0.5]]))),
    C("ple.clusters.ClusterEmbedding", "hyper", "cluster_dim", lambda f: f(4, 0)),
    C("ple.clusters.ClusterEmbedding", "range", "cluster_probs", lambda f: f(2, 3)(torch.tensor([[0.9, 0.9]]))),
    # ---------------------------------------------------------------- ple.towers
    C("ple.towers.TaskTower", "hyper", "activation", lambda f: f(2, "banana")),
    C("ple.towers.TaskTower", "shape", "h_tower", lambda f: f(2, None, in_dim=4)(_t(3, 5))),
    C("ple.towers.GroupTaskExpertBasket", "dup", "task", lambda f: f({"g": ["a"], "h": ["a"]})),
    C("ple.towers.GroupTaskExpertBasket", "shape", "x", lambda f: f({"g": ["a"]}, input_dim=4, num_clusters=3)(
        _t(2, 2, 4), _probs(2, 3))),
    C("ple.towers.ClusterTaskExpertBasket", "dup", "task_names", lambda f: f(["a", "a"])),
    C("ple.towers.ClusterTaskExpertBasket", "nan", "clusters", lambda f: f(["a"], input_dim=3, num_clusters=2)(
        _t(2, 1, 3), torch.tensor([[NAN, 0.5], [0.5, 0.5]]))),
    C("ple.towers.TaskSide", "dup", "duplicates", lambda f: f([ple.tasks.TASKS[0]] * 2, basket="legacy")),
    C("ple.towers.TaskSide", "hyper", "basket", lambda f: f([ple.tasks.TASKS[0]], basket="banana")),
    # ---------------------------------------------------------------- ple.transfer
    C("ple.transfer.find_cycle", "dtype", "tasks", lambda f: f("ctr", [])),
    C("ple.transfer.topological_order", "dtype", "tasks", lambda f: f("ctr", [])),
    C("ple.transfer.topological_order", "dup", "tasks", lambda f: f(["a", "a"], [])),
    C("ple.transfer.LogitTransfer", "hyper", "tasks", lambda f: f(["a__b", "c"], [], {})),
    C("ple.transfer.LogitTransfer", "range", "preds['a']", lambda f: f(["a", "b"], [("a", "b", "inverse")], {"a": 1},
                                                                        expert_dim=4)("b", _t(2, 4), {"a": _t(2, 1) + 1})),
    C("ple.transfer.LogitTransfer", "hyper", "target", lambda f: f(["a", "b"], [], {}, expert_dim=4)("c", _t(2, 4), {})),
    # ---------------------------------------------------------------- ple.losses
    C("ple.losses.focal_loss", "range", "eps", lambda f: f(_t(4), torch.ones(4), eps=0.7)),
    C("ple.losses.focal_loss", "range", "mask", lambda f: f(_t(4), torch.ones(4), mask=torch.tensor([0.5, 1, 1, 1]))),
    C("ple.losses.focal_loss_with_logits", "range", "alpha", lambda f: f(_t(4), torch.ones(4), alpha=5.0)),
    C("ple.losses.huber_loss", "range", "delta", lambda f: f(_t(4), _t(4), delta=0.0)),
    C("ple.losses.mse_loss", "nan", "pred", lambda f: f(_nan(4), _t(4))),
    C("ple.losses.nll_loss", "range", "target", lambda f: f(_probs(2, 3), torch.tensor([0, 5]))),
    C("ple.losses.info_nce_loss", "range", "temperature", lambda f: f(_t(2, 4), _t(3, 4), torch.tensor([0, 1]), 0.0)),
    C("ple.losses.task_loss", "shape", "pred", lambda f: f("life_stage", _probs(4, 3), torch.tensor([0, 1, 2, 0]))),
    C("ple.losses.FixedWeighting", "nan", "weights", lambda f: f(["a"], {"a": NAN})),
    C("ple.losses.FixedWeighting", "dtype", "task_names", lambda f: f("ab")),
    C("ple.losses.inward_clamp", "range", "low", lambda f: f(_t(3), 1.0, 0.0)),
    C("ple.losses.UncertaintyWeighting", "range", "log_var_bounds", lambda f: f(["a"], log_var_bounds=(4.0, -4.0))),
    C("ple.losses.UncertaintyWeighting", "dup", "task_names", lambda f: f(["a", "a"])),
    # ---------------------------------------------------------------- ple.experts (PLE-3)
    C("ple.experts.causal.notears_h", "shape", "W", lambda f: f(_t(3, 4))),
    C("ple.experts.causal.CausalExpert", "hyper", "n_vars", lambda f: f(n_vars=0)),
    C("ple.experts.causal.CausalExpert", "shape", "x", lambda f: f(input_dim=8, n_vars=4, hidden_dim=8, out_dim=4)(_t(2, 7))),
    C("ple.experts.deepfm.fm_interaction", "shape", "v", lambda f: f(_t(2, 5), _t(4, 3))),
    C("ple.experts.deepfm.DeepFMExpert", "hyper", "embed_dim", lambda f: f(embed_dim=0)),
    C("ple.experts.deepfm.DeepFMExpert", "nan", "features", lambda f: f()(_nan(2, 644))),
    C("ple.experts.hgcn.project", "range", "c", lambda f: f(_t(2, 3), -1.0)),
    C("ple.experts.hgcn.mobius_add", "shape", "y", lambda f: f(_t(2, 3) * 0.1, _t(2, 4) * 0.1, 1.0)),
    C("ple.experts.hgcn.conformal_factor", "range", "x", lambda f: f(torch.tensor([[0.9, 0.9]]), 1.0)),
    C("ple.experts.hgcn.expmap0", "range", "c", lambda f: f(_t(2, 3), 0.0)),
    C("ple.experts.hgcn.logmap0", "range", "y", lambda f: f(torch.tensor([[0.9, 0.9]]), 1.0)),
    C("ple.experts.hgcn.expmap", "range", "x", lambda f: f(torch.tensor([[0.9, 0.9]]), _t(1, 2), 1.0)),
    C("ple.experts.hgcn.logmap", "range", "y", lambda f: f(_t(1, 2) * 0.1, torch.tensor([[0.9, 0.9]]), 1.0)),
    C("ple.experts.hgcn.poincare_distance", "range", "x", lambda f: f(torch.tensor([[0.9, 0.9]]), _t(1, 2) * 0.1, 1.0)),
    C("ple.experts.hgcn.mobius_matvec", "shape", "weight", lambda f: f(_t(3, 5), _t(2, 4) * 0.1, 1.0)),
    C("ple.experts.hgcn.HGCNLayer", "hyper", "in_dim", lambda f: f(0, 4)),
    C("ple.experts.hgcn.HGCNExpert", "range", "init_curvature", lambda f: f(init_curvature=0.0)),
    C("ple.experts.hgcn.HGCNExpert", "range", "neighbor_mask", lambda f: f(input_dim=6, poincare_dim=2, hidden_dims=(8,), out_dim=4)(
        _t(2, 6) * 0.1, _t(2, 3, 6) * 0.1, torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0]]))),
    C("ple.experts.hgcn.poincare_hierarchy_embedding", "hyper", "dim", lambda f: f(np.zeros(3, int), np.zeros(3, int),
                                                                                 np.zeros(3, int), dim=0)),
    C("ple.experts.hgcn.customer_hierarchy_inputs", "hyper", "max_neighbors", lambda f: f(np.zeros((2, 2), int),
                                                                                        np.zeros((3, 2)), 2, max_neighbors=0)),
    C("ple.experts.lightgcn.normalized_adjacency", "range", "interactions", lambda f: f(np.array([[0, 5]]), 2, 3)),
    C("ple.experts.lightgcn.propagate", "hyper", "num_layers", lambda f: f(torch.eye(3).to_sparse(), _t(3, 2), num_layers=-1)),
    C("ple.experts.lightgcn.lightgcn_embeddings", "hyper", "epochs", lambda f: f(np.array([[0, 0], [1, 1]]), 2, 2, epochs=0)),
    C("ple.experts.lightgcn.LightGCNExpert", "hyper", "dropout", lambda f: f(dropout=1.5)),
    C("ple.experts.lightgcn.LightGCNExpert", "shape", "x", lambda f: f()(_t(2, 63))),
    C("ple.experts.optimal_transport.sinkhorn_log", "hyper", "n_iter", lambda f: f(_probs(1, 3)[0], _probs(1, 3)[0], _t(3, 3), 0.1, n_iter=0)),
    C("ple.experts.optimal_transport.sinkhorn_potentials", "range", "eps", lambda f: f(_probs(1, 3)[0], _probs(1, 3)[0], _t(3, 3), 0.0)),
    C("ple.experts.optimal_transport.sinkhorn_value", "range", "a", lambda f: f(_t(3) + 1, _probs(1, 3)[0], _t(3, 3), 0.1)),
    C("ple.experts.optimal_transport.OptimalTransportExpert", "range", "eps", lambda f: f(eps=0.0)),
    C("ple.experts.optimal_transport.OptimalTransportExpert", "shape", "x", lambda f: f()(_t(2, 600))),
    C("ple.experts.perslay.persistence_diagrams", "hyper", "max_points", lambda f: f(np.zeros((2, 1, 10)), max_points=0)),
    C("ple.experts.perslay.PersLayExpert", "hyper", "n_centres", lambda f: f(n_centres=0)),
    C("ple.experts.perslay.PersLayExpert", "range", "death", lambda f: f(n_channels=1, n_centres=4, hidden_dims=(8,), out_dim=4)(
        torch.tensor([[[1.0, 0.5, 0.0]]]), torch.ones(1, 1, dtype=torch.bool))),
    C("ple.experts.pool.ExpertInputs", "shape", "txn_seq", lambda f: f(features=_t(4, 644), txn_seq=_t(3, 10, 16))),
    C("ple.experts.pool.ExpertPoolConfig", "hyper", "feature_dim", lambda f: f(feature_dim=0)),
    C("ple.experts.pool.build_expert", "hyper", "unknown expert", lambda f: f("banana")),
    C("ple.experts.pool.run_expert", "hyper", "name", lambda f: f(torch.nn.Linear(2, 2), "banana", ple.experts.pool.ExpertInputs())),
    C("ple.experts.pool.ExpertPool", "dup", "names", lambda f: f(names=("deepfm", "deepfm"))),
    C("ple.experts.pool.synthetic_expert_inputs", "hyper", "batch_size", lambda f: f(0)),
    C("ple.experts.pool.benchmark_experts", "hyper", "reps", lambda f: f(ple.experts.pool.ExpertInputs(), reps=0)),
    C("ple.experts.pool.world_expert_inputs", "dtype", "world", lambda f: f("not a world")),
    C("ple.experts.temporal.segment_sums", "shape", "cum", lambda f: f(torch.zeros(()))),
    C("ple.experts.temporal.ssd_scan", "hyper", "chunk_len", lambda f: f(_t(1, 4, 2, 3), -_t(1, 4, 2), _t(1, 4, 2, 5),
                                                                        _t(1, 4, 2, 5), chunk_len=0)),
    C("ple.experts.temporal.selective_scan", "shape", "u", lambda f: f(_t(2, 5), _t(2, 5, 3), -_t(3, 4), _t(2, 5, 4), _t(2, 5, 4))),
    C("ple.experts.temporal.SelectiveSSM", "range", "dt_min", lambda f: f(8, dt_min=0.0)),
    C("ple.experts.temporal.SelectiveSSM", "shape", "x", lambda f: f(8)(_t(2, 5, 7))),
    C("ple.experts.temporal.LiquidCell", "hyper", "hidden_dim", lambda f: f(4, 0)),
    C("ple.experts.temporal.LiquidCell", "shape", "inputs", lambda f: f(4, 6)(_t(2, 4))),
    C("ple.experts.temporal.PatchCausalTransformer", "hyper", "patch_len", lambda f: f(8, patch_len=0)),
    C("ple.experts.temporal.PatchCausalTransformer", "shape", "x", lambda f: f(8)(_t(2, 30, 5))),
    C("ple.experts.temporal.TemporalExpert", "empty", "txn_seq", lambda f: f()(_t(2, 0, 16), _t(2, 10, 8))),
    # ---------------------------------------------------------------- ple.system (PLE-6)
    C("ple.system.SystemConfig", "hyper", "expert_dim", lambda f: f(expert_dim=0)),
    C("ple.system.SystemConfig", "nan", "bias_high", lambda f: f(bias_high=NAN)),
    C("ple.system.SystemConfig", "dup", "experts", lambda f: f(experts=("deepfm", "deepfm"))),
    C("ple.system.preset", "hyper", "preset name", lambda f: f("huge")),
    C("ple.system.SystemInputs", "dtype", "experts", lambda f: f("not expert inputs")),
    C("ple.system.SystemInputs", "shape", "cluster_probs", lambda f: f(ple.experts.pool.ExpertInputs(features=_t(4, 644)),
                                                                     cluster_probs=_probs(3, 20))),
    C("ple.system.SystemInputs", "hyper", "hmm", lambda f: f(ple.experts.pool.ExpertInputs(features=_t(4, 644)),
                                                            hmm={"banana": _t(4, 16)})),
    C("ple.system.dependency_waves", "dtype", "tasks", lambda f: f("ctr", [])),
    C("ple.system.dependency_waves", "dup", "tasks", lambda f: f(["ctr", "ctr"], [])),
    C("ple.system.activation", "dtype", "spec", lambda f: f("ctr", _t(2, 1))),
    C("ple.system.activation", "shape", "logits", lambda f: f(ple.tasks.get_task("ctr"), _t(2, 3))),
    C("ple.system.logit_loss", "shape", "logits", lambda f: f(ple.tasks.get_task("ctr"), _t(4, 3), torch.ones(4))),
    C("ple.system.logit_loss", "shape", "target", lambda f: f(ple.tasks.get_task("ctr"), _t(4, 1), torch.ones(5))),
    C("ple.system.logit_loss", "range", "target", lambda f: f(ple.tasks.get_task("life_stage"), _t(4, 6),
                                                             torch.tensor([0, 1, 2, 9]))),
    C("ple.system.logit_loss", "range", "target", lambda f: f(ple.tasks.get_task("ctr"), _t(4, 1),
                                                             torch.tensor([0.0, 1.0, 2.0, 0.5]))),
    C("ple.system.logit_loss", "nan", "logits", lambda f: f(ple.tasks.get_task("ltv"), _nan(4, 1), _t(4))),
    C("ple.system.PLESystem", "hyper", "config", lambda f: f({"use_hmm": False})),
    C("ple.system.PLESystem", "shape", "features", lambda f: f(_sys_cfg())(_sys_inputs(features=_t(4, 600)))),
    C("ple.system.PLESystem", "dtype", "features", lambda f: f(_sys_cfg())(_sys_inputs(features=_t(4, 644, dtype=torch.float64)))),
    C("ple.system.PLESystem", "nan", "features", lambda f: f(_sys_cfg())(_sys_inputs(features=_nan(4, 644)))),
    C("ple.system.PLESystem", "range", "cluster_probs", lambda f: f(_sys_cfg())(_sys_inputs(cluster_probs=_t(4, 20) + 1))),
    C("ple.system.PLESystem", "dtype", "inputs", lambda f: f(_sys_cfg())(_t(4, 644))),
    C("ple.system.SystemLoss", "dtype", "system", lambda f: f("not a system")),
    C("ple.system.SystemLoss", "shape", "losses['ctr']", lambda f: f(ple.system.PLESystem(_sys_cfg()))(
        {"ctr": _t(3), "cvr": _t(())})),
    C("ple.system.SystemLoss", "hyper", "losses", lambda f: f(ple.system.PLESystem(_sys_cfg()))({"ctr": _t(())})),
    C("ple.system.PoolCGC", "hyper", "config", lambda f: f("ci")),
    C("ple.system.PoolCGC", "shape", "features", lambda f: f(_sys_cfg())(_sys_inputs(features=_t(4, 600)))),
    C("ple.system.synthetic_system_inputs", "hyper", "batch_size", lambda f: f(_sys_cfg(), 0)),
    C("ple.system.synthetic_system_inputs", "dtype", "config", lambda f: f("ci", 4)),
    # ---------------------------------------------------------------- ple.data.pipeline (PLE-6)
    C("ple.data.pipeline.PipelineConfig", "hyper", "PipelineConfig.chunk_size", lambda f: f(chunk_size=0)),
    C("ple.data.pipeline.PipelineConfig", "hyper", "PipelineConfig.lightgcn_dim", lambda f: f(lightgcn_dim=2.7)),
    C("ple.data.pipeline.release_pages", "dtype", "arrays", lambda f: f(5)),
    C("ple.data.pipeline.split_indices", "hyper", "n_customers", lambda f: f(2)),
    C("ple.data.pipeline.split_indices", "range", "fractions", lambda f: f(10, fractions=(0.5, 0.6, -0.1))),
    C("ple.data.pipeline.split_indices", "nan", "fractions", lambda f: f(10, fractions=(NAN, 0.5, 0.5))),
    C("ple.data.pipeline.fingerprint", "dtype", "parts", lambda f: f(object())),
    C("ple.data.pipeline.OfflineFits", "dtype", "config", lambda f: f({"seed": 0})),
    C("ple.data.pipeline.OfflineFits", "range", "train", lambda f: f(ple.data.pipeline.PipelineConfig()).fit(
        _small_world(), np.array([0, 999]))),
    C("ple.data.pipeline.PreparedWorld", "dtype", "fits", lambda f: f(_small_world(), "fits", {}, {}, None, "x")),
    C("ple.data.pipeline.StreamingBatches", "dtype", "data", lambda f: f("data", np.arange(3), ("ctr",), 4)),
    C("ple.data.pipeline.prepare_world", "dtype", "world", lambda f: f("not a world")),
    C("ple.data.pipeline.prepare_world", "dup", "splits", lambda f: f(_small_world(), splits={
        "train": np.arange(40), "val": np.arange(30, 50), "test": np.arange(50, 64)})),
    C("ple.data.pipeline.prepare_world", "range", "splits", lambda f: f(_small_world(), splits={
        "train": np.arange(40), "val": np.arange(40, 50), "test": np.arange(50, 70)})),
    # ---------------------------------------------------------------- ple.adatt (ADATT-2)
    C("ple.adatt.gradient_cosines", "shape", "grads", lambda f: f(_t(3))),
    C("ple.adatt.gradient_cosines", "nan", "grads", lambda f: f(_nan(2, 3))),
    C("ple.adatt.gradient_cosines", "range", "eps", lambda f: f(_t(2, 3), eps=0.0)),
    C("ple.adatt.ema_update", "shape", "cosines", lambda f: f(torch.eye(3), _t(2, 2), torch.zeros((), dtype=torch.long), 0.9)),
    C("ple.adatt.ema_update", "range", "ema_decay", lambda f: f(torch.eye(2), _t(2, 2), torch.zeros((), dtype=torch.long), 1.5)),
    C("ple.adatt.ema_update", "shape", "update_count", lambda f: f(torch.eye(2), _t(2, 2), torch.zeros(2), 0.9)),
    C("ple.adatt.task_loss_vector", "shape", "losses", lambda f: f({"a": _t(3)}, ["a"])),
    C("ple.adatt.task_loss_vector", "dup", "task_names", lambda f: f({"a": _t(())}, ["a", "a"])),
    C("ple.adatt.TaskAffinityComputer", "range", "ema_decay", lambda f: f(["a", "b"], torch.nn.Linear(2, 2), ema_decay=1.0)),
    C("ple.adatt.TaskAffinityComputer", "dup", "task_names", lambda f: f(["a", "a"], torch.nn.Linear(2, 2))),
    C("ple.adatt.TaskAffinityComputer", "hyper", "losses", lambda f: f(["a", "b"], torch.nn.Linear(2, 2))({"a": _t(())})),
    C("ple.adatt.TaskAffinityComputer", "nan", "losses", lambda f: _affinity_nan(f)),
    C("ple.adatt.AffinityAggregate", "dtype", "computer", lambda f: f("computer")),
    C("ple.adatt.AffinityAggregate", "dtype", "inner", lambda f: f(_computer(), inner=3)),
    # ---------------------------------------------------------------- ple.adatt_transfer (ADATT-3)
    C("ple.adatt_transfer.group_prior", "hyper", "task_names", lambda f: f(["nope"])),
    C("ple.adatt_transfer.group_prior", "dup", "task_names", lambda f: f(["ctr", "ctr"])),
    C("ple.adatt_transfer.group_prior", "range", "inter", lambda f: f(["ctr", "cvr"], inter=-1.0)),
    C("ple.adatt_transfer.prior_ratio", "hyper", "freeze_epoch", lambda f: f(3, 2, 2)),
    C("ple.adatt_transfer.prior_ratio", "range", "start", lambda f: f(3, 1, 4, start=1.5)),
    C("ple.adatt_transfer.prior_ratio", "hyper", "epoch", lambda f: f(-1, 1, 4)),
    C("ple.adatt_transfer.blend", "shape", "affinity", lambda f: f(_t(3, 3), _t(2, 2), _t(3, 3), 0.5)),
    C("ple.adatt_transfer.blend", "range", "ratio", lambda f: f(_t(3, 3), _t(3, 3), _t(3, 3), 1.5)),
    C("ple.adatt_transfer.transfer_weights", "shape", "affinity", lambda f: f(_t(3, 3), _t(2, 2))),
    C("ple.adatt_transfer.transfer_weights", "range", "temperature", lambda f: f(_t(3, 3), _t(3, 3), temperature=0.0)),
    C("ple.adatt_transfer.transfer_weights", "shape", "loss_mask", lambda f: f(_t(3, 3), _t(3, 3), loss_mask=torch.ones(2))),
    C("ple.adatt_transfer.transfer_enhanced_losses", "shape", "weights", lambda f: f(_t(3), _t(2, 2))),
    C("ple.adatt_transfer.transfer_enhanced_losses", "range", "transfer_lambda", lambda f: f(_t(3), _t(3, 3), -1.0)),
    C("ple.adatt_transfer.AdaTT", "hyper", "freeze_epoch", lambda f: f(_computer(), warmup_epochs=2, freeze_epoch=1)),
    C("ple.adatt_transfer.AdaTT", "nan", "prior", lambda f: f(_computer(), prior=_nan(2, 2))),
    C("ple.adatt_transfer.AdaTT", "range", "temperature", lambda f: f(_computer(), temperature=0.0)),
    C("ple.adatt_transfer.AdaTT", "hyper", "losses", lambda f: f(_computer())({"ctr": _t(())})),
    # ---------------------------------------------------------------- ple.interpret (PLE-6 SAE)
    C("ple.interpret.SparseAutoencoder", "hyper", "expansion", lambda f: f(4, 0)),
    C("ple.interpret.SparseAutoencoder", "shape", "h", lambda f: f(4)(_t(2, 5))),
    C("ple.interpret.SparseAutoencoder", "dtype", "h", lambda f: f(4)(_t(2, 4, dtype=torch.float64))),
    C("ple.interpret.SparseAutoencoder", "nan", "h", lambda f: f(4)(_nan(2, 4))),
    C("ple.interpret.sae_loss", "shape", "recon", lambda f: f(_t(2, 4), ple.interpret.SAEOutput(_t(2, 8), _t(2, 3)))),
    C("ple.interpret.sae_loss", "dtype", "out", lambda f: f(_t(2, 4), (_t(2, 8), _t(2, 4)))),
    C("ple.interpret.sae_loss", "range", "l1_lambda", lambda f: f(_t(2, 4), ple.interpret.SAEOutput(_t(2, 8), _t(2, 4)), -1.0)),
    C("ple.interpret.SAEHead", "range", "loss_weight", lambda f: f(4, loss_weight=-1.0)),
    C("ple.interpret.SAEHead", "shape", "h_shared", lambda f: f(4)(_t(2, 5))),
    C("ple.interpret.latent_activity", "shape", "z", lambda f: f(_t(3))),
    C("ple.interpret.latent_activity", "range", "dense_fraction", lambda f: f(_t(3, 4), 1.5)),
    C("ple.interpret.latent_activity", "empty", "z", lambda f: f(_t(0, 4))),
    # ---------------------------------------------------------------- ple.evidential (PLE-6 evidential)
    C("ple.evidential.evidence", "range", "max_evidence", lambda f: f(_t(3), -1.0)),
    C("ple.evidential.evidence", "dtype", "z", lambda f: f([1.0, 2.0])),
    C("ple.evidential.dirichlet_uncertainty", "range", "alpha", lambda f: f(torch.tensor([[0.5, -1.0]]))),
    C("ple.evidential.dirichlet_uncertainty", "shape", "alpha", lambda f: f(_t(3))),
    C("ple.evidential.dirichlet_mean", "range", "alpha", lambda f: f(torch.tensor([[0.5, 0.0]]))),
    C("ple.evidential.dirichlet_kl_uniform", "nan", "alpha", lambda f: f(_nan(2, 3))),
    C("ple.evidential.evidential_kl", "hyper", "form", lambda f: f(_t(2, 3) + 1, torch.tensor([0, 1]), form="banana")),
    C("ple.evidential.evidential_kl", "range", "y", lambda f: f(_t(2, 3) + 1, torch.tensor([0, 3]))),
    C("ple.evidential.dirichlet_risk", "hyper", "risk", lambda f: f(_t(2, 3) + 1, torch.tensor([0, 1]), risk="banana")),
    C("ple.evidential.dirichlet_risk", "shape", "y", lambda f: f(_t(4, 3) + 1, torch.tensor([0, 1, 2]))),
    C("ple.evidential.dirichlet_risk", "range", "y", lambda f: f(_t(2, 3) + 1, torch.tensor([0, -1]))),
    C("ple.evidential.dirichlet_loss", "range", "kl_coef", lambda f: f(_t(2, 3) + 1, torch.tensor([0, 1]), -1.0)),
    C("ple.evidential.kl_annealing", "hyper", "anneal_epochs", lambda f: f(1, anneal_epochs=0)),
    C("ple.evidential.kl_annealing", "hyper", "epoch", lambda f: f(-1)),
    C("ple.evidential.NIG", "shape", "nu", lambda f: f(_t(2, 1), _t(2, 2), _t(2, 1) + 1, _t(2, 1))),
    C("ple.evidential.NIG", "dtype", "gamma", lambda f: f([0.0], _t(2, 1), _t(2, 1) + 1, _t(2, 1))),
    C("ple.evidential.nig_nll", "range", "nu", lambda f: f(_t(2, 1), ple.evidential.NIG(_t(2, 1), -_t(2, 1), _t(2, 1) + 1, _t(2, 1)))),
    C("ple.evidential.nig_nll", "shape", "y", lambda f: f(_t(3, 1), ple.evidential.NIG(_t(2, 1), _t(2, 1), _t(2, 1) + 1, _t(2, 1)))),
    C("ple.evidential.nig_nll", "dtype", "nig", lambda f: f(_t(2, 1), _t(2, 4, 1))),
    C("ple.evidential.nig_regularizer", "shape", "y", lambda f: f(_t(3, 1), ple.evidential.NIG(_t(2, 1), _t(2, 1), _t(2, 1) + 1, _t(2, 1)))),
    C("ple.evidential.nig_regularizer", "nan", "y", lambda f: f(_nan(2, 1), ple.evidential.NIG(_t(2, 1), _t(2, 1), _t(2, 1) + 1, _t(2, 1)))),
    C("ple.evidential.nig_loss", "range", "reg_lambda", lambda f: f(_t(2, 1), ple.evidential.NIG(_t(2, 1), _t(2, 1), _t(2, 1) + 1, _t(2, 1)), -1.0)),
    C("ple.evidential.evidential_name", "empty", "task", lambda f: f("")),
    C("ple.evidential.evidential_name", "dtype", "task", lambda f: f(3)),
    C("ple.evidential.EvidentialHeads", "hyper", "hidden_dim", lambda f: f([ple.tasks.get_task("ctr")], 4, hidden_dim=0)),
    C("ple.evidential.EvidentialHeads", "empty", "specs", lambda f: f([], 4)),
    C("ple.evidential.EvidentialHeads", "dup", "specs", lambda f: f([ple.tasks.get_task("ctr")] * 2, 4)),
    C("ple.evidential.EvidentialHeads", "shape", "hidden", lambda f: f([ple.tasks.get_task("ctr")], 4)(None, {"ctr": _t(2, 5)})),
    C("ple.evidential.EvidentialHeads", "dtype", "hidden", lambda f: f([ple.tasks.get_task("ctr")], 4)(
        None, {"ctr": _t(2, 4, dtype=torch.float64)})),
    C("ple.evidential.EvidentialHeads", "hyper", "hidden", lambda f: f([ple.tasks.get_task("ctr")], 4)(None, {"cvr": _t(2, 4)})),
    C("ple.evidential.KLAnnealing", "dtype", "heads", lambda f: f("heads")),
    C("ple.evidential.KLAnnealing", "hyper", "offset", lambda f: f(ple.evidential.EvidentialHeads([ple.tasks.get_task("ctr")], 4), -1)),
    C("ple.evidential.SideHeadSystem", "dtype", "system", lambda f: f(torch.nn.Linear(2, 2))),
    C("ple.evidential.SideHeadSystem", "dtype", "head 'sae'", lambda f: f.attach(ple.system.PLESystem(_sys_cfg()), sae="sae")),
    C("ple.evidential.SideHeadSystem", "shape", "features", lambda f: f(ple.system.PLESystem(_sys_cfg()))(
        _sys_inputs(features=_t(4, 600)))),
]


_SYSTEM = []


def _sys_cfg():
    """A small PLESystem config (one expert, two tasks, one transfer edge): builds in milliseconds."""
    if not _SYSTEM:
        _SYSTEM.append(ple.system.SystemConfig(
            experts=("deepfm",), tasks=("ctr", "cvr"), domain_prior=False, transfer_edges=(("ctr", "cvr", "sequential"),),
            expert_overrides=(("deepfm", {"hidden_dims": (8,)}),), group_dims=(8,), tower_hidden_dims=(8,)))
    return _SYSTEM[0]


def _sys_inputs(batch=4, **changes):
    x = ple.system.synthetic_system_inputs(_sys_cfg(), batch, seq_len=8, n_points=4)
    for k, v in changes.items():
        if k == "cluster_probs":
            x.cluster_probs = v
        else:
            setattr(x.experts, k, v)
    return x


def _computer():
    return ple.adatt.TaskAffinityComputer(["ctr", "cvr"], torch.nn.Linear(2, 2))


def _affinity_nan(f):
    lin = torch.nn.Linear(2, 2)
    z = lin(_t(1, 2))
    return f(["a", "b"], lin)({"a": z[0, 0] * NAN, "b": z[0, 1]})


def _hmm():
    from hmmlearn.hmm import GaussianHMM

    m = GaussianHMM(n_components=2, covariance_type="diag")
    m.startprob_ = np.array([0.5, 0.5])
    m.transmat_ = np.full((2, 2), 0.5)
    m.means_ = np.zeros((2, 2))
    m.covars_ = np.ones((2, 2))
    return m


def _census_raw():
    from ple.data.census import CENSUS_COLUMNS, CensusRaw

    vocab = tuple(("a", "b") for _ in CENSUS_COLUMNS)
    return CensusRaw("train", vocab, np.zeros((3, len(CENSUS_COLUMNS)), dtype=np.int64))


_WORLD = []


def _small_world():
    if not _WORLD:
        _WORLD.append(ple.data.world.generate(64, seed=0))
    return _WORLD[0]


# Callables of `__all__` that take no user input to check, or whose checks live elsewhere.
EXEMPT: dict[str, str] = {
    # exception types and the switch's reader
    **{f"ple.checks.{n}": "an exception type" for n in
       ("HyperparameterError", "InputTypeError", "ShapeError", "NonFiniteError", "TaskError")},
    "ple.checks.validation_enabled": "takes no argument",
    # result containers: built by the package from checked inputs
    "ple.cgc.CGCOutput": "a result container (NamedTuple) the package builds",
    "ple.gates.TwoStageOutput": "a result container the package builds",
    "ple.fit.FitState": "the engine's state, built by ple.fit.fit",
    "ple.fit.History": "the engine's record, built by ple.fit.fit",
    "ple.fit.Callback": "a base class with no-op hooks",
    "ple.hmm.Generator": "a result container of generator_from_transmat",
    "ple.data.mmoe_synthetic.MMoESynthetic": "a result container of make_mmoe_synthetic",
    "ple.data.census.CensusData": "a result container of load_census",
    "ple.data.census.CensusSplits": "a result container of load_census",
    "ple.data.census.CensusRaw": "a result container of read_census",
    "ple.data.world.WorldConfig": "built and checked by make_config (every field is validated there)",
    "ple.data.world.WorldParams": "a result container of make_params",
    "ple.data.world.CustomerWorld": "a result container of generate / load_world",
    "ple.experts.pool.ExpertPoolOutput": "a result container the pool builds",
    "ple.system.SystemOutput": "a result container of PLESystem.run / PoolCGC.run",
    "ple.interpret.SAEOutput": "a result container of SparseAutoencoder.forward",
    "ple.evidential.SideOutput": "a result container of SideHeadSystem.run",
    "ple.experts.base.SharedExpert": "an abstract base class; each expert checks its own inputs",
    "ple.gates.registry_expert_dims": "takes no argument",
    "ple.data.world.signal_tasks": "takes no argument",
    # the generator's internal steps: their arrays come from make_params / generate, checked there
    **{f"ple.data.world.{n}": "a step of the world generator; its inputs come from make_params / generate"
       for n in ("causal_mechanism", "interaction_aggregates", "raw_signals", "segment_posterior",
                 "regime_loglik", "regime_posteriors", "brand_within_category", "label_distributions",
                 "plant_pairs")},
}

# ple.train and ple.weighting: their rows live in tests/contract_train.py.
CASES += TRAIN_CASES
EXEMPT.update(TRAIN_EXEMPT)


def _public_callables() -> dict[str, object]:
    out = {}
    for info in pkgutil.walk_packages(ple.__path__, "ple."):
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if callable(obj) and not isinstance(obj, (dict, tuple, list)):
                out[f"{info.name}.{name}"] = obj
    return out


def test_every_public_callable_is_in_the_table():
    public = _public_callables()
    covered = {c.entry for c in CASES} | set(EXEMPT)
    missing = sorted(set(public) - covered)
    assert not missing, f"public entry points with no contract case and no exemption: {missing}"
    stale = sorted(covered - set(public))
    assert not stale, f"contract rows for names that are not public (or in an exempt module): {stale}"
    assert all(reason.strip() for reason in EXEMPT.values())
    assert {c.kind for c in CASES} <= set(CLASSES)


def _resolve(entry: str):
    module, name = entry.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_an_error_naming_the_argument(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a case would write lands in a scratch folder
    f = _resolve(case.entry)
    with pytest.raises((ValueError, TypeError)) as err:
        case.call(f)
    assert case.arg in str(err.value), f"{case.entry} raised {type(err.value).__name__}: {err.value}"
    # the error comes from the package's checks, not from deep inside torch / numpy
    assert type(err.value).__module__.startswith(("ple", "builtins")), type(err.value)
    tb = err.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    origin = inspect.getmodule(tb.tb_frame)
    assert origin is not None and origin.__name__.startswith("ple"), (
        f"{case.entry}: the error was raised in {origin.__name__ if origin else '?'}, not by ple's checks"
    )


# ---------------------------------------------------------------- empty batches: one behaviour everywhere
def _z(*shape):
    return torch.zeros(*shape)


def _first(out):
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (list, tuple)) and not hasattr(out, "_fields"):
        out = out[0]
    for field in ("task", "stage2"):
        out = getattr(out, field, out)
    return out


EMPTY_MODULES = {
    "ple.layers.MLP": lambda: ple.layers.MLP(4, [3])(_z(0, 4)),
    "ple.layers.StackedMLP": lambda: ple.layers.StackedMLP(2, 4, [3])(_z(0, 4)),
    "ple.mmoe.SharedBottom": lambda: ple.mmoe.SharedBottom(4, 2)(_z(0, 4)),
    "ple.mmoe.MMoE": lambda: ple.mmoe.MMoE(4, 2, num_experts=2)(_z(0, 4)),
    "ple.cgc.CGC": lambda: ple.cgc.CGC(4, 2)(_z(0, 4)),
    "ple.cgc.PLE": lambda: ple.cgc.PLE(4, 2)(_z(0, 4)),
    "ple.baselines.SingleTaskModels": lambda: ple.baselines.SingleTaskModels(4, 2)(_z(0, 4)),
    "ple.gates.CGCLayer": lambda: ple.gates.CGCLayer(2, shared_dims=[4, 4], expert_dim=4)(_z(0, 8), _z(0, 2, 1, 4)),
    "ple.gates.CGCAttention": lambda: ple.gates.CGCAttention(2, [4, 4])(_z(0, 8)),
    "ple.gates.TwoStageCGC": lambda: ple.gates.TwoStageCGC(2, [4, 4], expert_dim=4)(_z(0, 8), _z(0, 2, 1, 4)),
    "ple.hmm.HMMProjector": lambda: ple.hmm.HMMProjector(16, 8)(_z(0, 16)),
    "ple.clusters.ClusterEmbedding": lambda: ple.clusters.ClusterEmbedding(3, 2)(_z(0, 3)),
    "ple.towers.TaskTower": lambda: ple.towers.TaskTower(2, "softmax", in_dim=4)(_z(0, 4)),
    "ple.towers.GroupTaskExpertBasket": lambda: ple.towers.GroupTaskExpertBasket({"g": ["a", "b"]}, input_dim=4,
                                                                                  num_clusters=3)(_z(0, 2, 4), _z(0, 3)),
    "ple.towers.ClusterTaskExpertBasket": lambda: ple.towers.ClusterTaskExpertBasket(["a"], input_dim=3, num_clusters=2)(
        _z(0, 1, 3), _z(0, 2)),
    "ple.towers.TaskSide": lambda: ple.towers.TaskSide(ple.tasks.active_tasks(), input_dim=8)(
        _z(0, len(ple.tasks.ACTIVE_TASK_NAMES), 8), _z(0, 20)),
    "ple.system.PLESystem": lambda: ple.system.PLESystem(_sys_cfg())(_sys_inputs().index(slice(0, 0))),
    "ple.system.PoolCGC": lambda: ple.system.PoolCGC(_sys_cfg())(_sys_inputs().index(slice(0, 0))),
    "ple.interpret.SparseAutoencoder": lambda: ple.interpret.SparseAutoencoder(4)(_z(0, 4)).latent,
    "ple.interpret.SAEHead": lambda: ple.interpret.SAEHead(4)(_z(0, 4)),
    "ple.evidential.EvidentialHeads": lambda: ple.evidential.EvidentialHeads(ple.tasks.select_tasks(("ctr", "nba", "ltv")), 4)(
        None, {t: _z(0, 4) for t in ("ctr", "nba", "ltv")})["uncertainty"],
    "ple.evidential.SideHeadSystem": lambda: _side_system()(_sys_inputs().index(slice(0, 0))),
}


@pytest.mark.parametrize("entry", sorted(EMPTY_MODULES))
def test_an_empty_batch_gives_an_empty_output(entry):
    out = _first(EMPTY_MODULES[entry]())
    assert out.shape[0] == 0


EMPTY_LOSSES = {
    "focal_loss": lambda f, p: f(p, _z(0)),
    "focal_loss_with_logits": lambda f, p: f(p, _z(0)),
    "huber_loss": lambda f, p: f(p, _z(0)),
    "mse_loss": lambda f, p: f(p, _z(0)),
    "nll_loss": lambda f, p: f(p.reshape(0, 3), torch.zeros(0, dtype=torch.long)),
    "info_nce_loss": lambda f, p: f(p.reshape(0, 4), _t(3, 4), torch.zeros(0, dtype=torch.long)),
}


def _side_system():
    system = ple.system.PLESystem(_sys_cfg())
    heads = dict(sae=ple.interpret.SAEHead(system.pool.output_dim),
                 evidential=ple.evidential.EvidentialHeads.for_system(system))
    return ple.evidential.SideHeadSystem.attach(system, **heads)


@pytest.mark.parametrize("name", sorted(EMPTY_LOSSES))
def test_an_empty_batch_gives_a_zero_loss_with_a_zero_gradient(name):
    p = torch.zeros(0, requires_grad=True)
    loss = EMPTY_LOSSES[name](getattr(ple.losses, name), p)
    loss.backward()
    assert loss.item() == 0.0 and p.grad is not None and p.grad.numel() == 0
    assert ple.fit.masked_mean(torch.zeros(0)).item() == 0.0


# per-sample losses ([B] out): an empty batch gives an empty loss and a zero-size gradient
EMPTY_PER_SAMPLE = {
    "ple.system.logit_loss": lambda p: ple.system.logit_loss(ple.tasks.get_task("ctr"), p.reshape(0, 1), _z(0)),
    "ple.system.logit_loss[nll]": lambda p: ple.system.logit_loss(ple.tasks.get_task("life_stage"), p.reshape(0, 6),
                                                                   torch.zeros(0, dtype=torch.long)),
    "ple.interpret.sae_loss": lambda p: ple.interpret.sae_loss(_z(0, 4), ple.interpret.SAEOutput(p.reshape(0, 8), p.reshape(0, 4))),
    "ple.evidential.dirichlet_loss": lambda p: ple.evidential.dirichlet_loss(p.reshape(0, 3) + 1, torch.zeros(0, dtype=torch.long), 0.1),
    "ple.evidential.nig_loss": lambda p: ple.evidential.nig_loss(_z(0, 1), ple.evidential.NIG(
        p.reshape(0, 1), p.reshape(0, 1) + 1, p.reshape(0, 1) + 2, p.reshape(0, 1) + 1)),
}


@pytest.mark.parametrize("name", sorted(EMPTY_PER_SAMPLE))
def test_an_empty_batch_gives_an_empty_per_sample_loss(name):
    p = torch.zeros(0, requires_grad=True)
    loss = EMPTY_PER_SAMPLE[name](p)
    assert loss.shape == (0,)
    loss.sum().backward()
    assert p.grad is not None and p.grad.numel() == 0
