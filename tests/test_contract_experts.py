"""The input contract of the seven experts (ple.experts.*): the defects of issue 18, one test each."""

from __future__ import annotations

import pytest
import torch

from ple.experts import hgcn, optimal_transport, perslay, pool, temporal


def _t(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_pool_rejects_duplicate_expert_names():
    # output_dim used to report 64 while the pool produced 128
    with pytest.raises(ValueError, match=r"names has duplicates: \['deepfm'\]"):
        pool.ExpertPool(names=("deepfm", "deepfm"))


def test_expert_inputs_fields_agree_on_the_batch_size():
    with pytest.raises(ValueError, match=r"txn_seq has 3 rows; expected 4 \(the batch size of features\)"):
        pool.ExpertInputs(features=_t(4, 644), txn_seq=_t(3, 10, 16))
    with pytest.raises(TypeError, match="collaborative must be a torch.Tensor"):
        pool.ExpertInputs(collaborative=[[0.0] * 64])


def test_sinkhorn_needs_at_least_one_iteration():
    a = torch.full((3,), 1 / 3)
    with pytest.raises(ValueError, match="n_iter must be an int >= 1; got 0"):
        optimal_transport.sinkhorn_log(a, a, _t(3, 3), 0.1, n_iter=0)


def test_poincare_maps_reject_points_outside_the_ball():
    out = torch.tensor([[0.9, 0.9]])  # norm 1.27 > 1 = 1 / sqrt(c)
    inside = torch.tensor([[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"y must lie inside the Poincaré ball"):
        hgcn.logmap0(out, 1.0)
    with pytest.raises(ValueError, match=r"x must lie inside the Poincaré ball"):
        hgcn.poincare_distance(out, inside, 1.0)
    assert torch.isfinite(hgcn.poincare_distance(inside, inside * 0.5, 1.0)).all()


def test_hgcn_curvature_and_neighbour_mask():
    with pytest.raises(ValueError, match="init_curvature must be > 0"):
        hgcn.HGCNExpert(init_curvature=0.0)
    expert = hgcn.HGCNExpert(input_dim=6, poincare_dim=2, hidden_dims=(8,), out_dim=4)
    x = _t(2, 6) * 0.1
    neighbors = _t(2, 3, 6, seed=1) * 0.1
    with pytest.raises(ValueError, match=r"neighbor_mask must hold 0 / 1"):
        expert(x, neighbors, torch.tensor([[1.0, 2.0, 0.0], [1.0, 1.0, 1.0]]))


def test_perslay_rejects_death_before_birth():
    expert = perslay.PersLayExpert(n_channels=1, n_centres=4, hidden_dims=(8,), out_dim=4)
    d = torch.tensor([[[1.0, 0.5, 0.0]]])  # birth 1.0, death 0.5, channel 0: persistence -0.5
    with pytest.raises(ValueError, match="death"):
        expert(d, torch.ones(1, 1, dtype=torch.bool))


def test_sequence_modules_check_their_inputs_and_hyperparameters():
    with pytest.raises(ValueError, match="dt_min must be > 0"):
        temporal.SelectiveSSM(8, dt_min=0.0)
    with pytest.raises(ValueError, match="patch_len must be an int >= 1; got 0"):
        temporal.PatchCausalTransformer(8, patch_len=0)
    ssm = temporal.SelectiveSSM(8)
    with pytest.raises(ValueError, match=r"x has shape \[2, 5, 7\]; expected \[B, T, 8\]"):
        ssm(_t(2, 5, 7))
    cell = temporal.LiquidCell(4, 6)
    with pytest.raises(ValueError, match=r"inputs has shape \[2, 4\]; expected \[B, T, 4\]"):
        cell(_t(2, 4))
    with pytest.raises(ValueError, match=r"x has shape \[2, 30, 5\]; expected \[B, T, 8\]"):
        temporal.PatchCausalTransformer(8, patch_len=15)(_t(2, 30, 5))
    with pytest.raises(ValueError, match="u has shape"):
        temporal.selective_scan(_t(2, 5), _t(2, 5, 3), -_t(3, 4), _t(2, 5, 4), _t(2, 5, 4))


def test_temporal_expert_rejects_a_length_zero_sequence():
    expert = temporal.TemporalExpert()
    with pytest.raises(ValueError, match=r"txn_seq has 0 steps; expected at least 1"):
        expert(_t(2, 0, 16), _t(2, 10, 8))
