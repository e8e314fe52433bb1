"""ple.towers -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['EXPERT_DIM', 'TOWER_HIDDEN_DIMS', 'TOWER_DROPOUT', 'TOWER_ACTIVATIONS', 'TaskTower', 'GroupTaskExpertBasket', 'ClusterTaskExpertBasket', 'TaskSide']

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ple.clusters import ClusterEmbedding
from ple.layers import MLP, StackedLinear, check_features
from ple.losses import task_loss
from ple.tasks import TaskSpec
from ple.transfer import LogitTransfer

EXPERT_DIM = 32  # h_expert / h_tower width
TOWER_HIDDEN_DIMS = (64, 32)
TOWER_DROPOUT = 0.2
TOWER_ACTIVATIONS = ("sigmoid", "softmax", None)


def _shape(t) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


class TaskTower(nn.Module):
    """Task tower (eq-task-tower): y = act(Linear_{32->out}(Block_{64->32}(Block_{32->64}(h)))).

    Block = Linear -> LayerNorm -> SiLU -> Dropout (`ple.layers.MLP`). activation: "sigmoid"
    (binary), "softmax" (multiclass), None (regression, and the contrastive tower, whose output
    is a 128-d embedding). h: [B, in_dim] -> [B, out_dim]; `logits(h)` skips the activation.
    """

    def __init__(
        self,
        out_dim: int,
        activation: str | None = None,
        in_dim: int = EXPERT_DIM,
        hidden_dims: Sequence[int] = TOWER_HIDDEN_DIMS,
        dropout: float = TOWER_DROPOUT,
    ):
        super().__init__()
        if activation not in TOWER_ACTIVATIONS:
            raise ValueError(f"activation must be one of {TOWER_ACTIVATIONS}; got {activation!r}")
        if out_dim < 1:
            raise ValueError(f"out_dim must be >= 1; got {out_dim}")
        if activation == "softmax" and out_dim < 2:
            raise ValueError("a softmax tower needs out_dim >= 2")
        self.in_dim, self.out_dim, self.activation = int(in_dim), int(out_dim), activation
        self.mlp = MLP(in_dim, list(hidden_dims), out_dim, dropout=dropout)

    @classmethod
    def from_spec(cls, spec: TaskSpec, **kwargs) -> TaskTower:
        """The tower of a registry task: sigmoid (binary), softmax (multiclass), none otherwise."""
        activation = {"binary": "sigmoid", "multiclass": "softmax"}.get(spec.task_type)
        return cls(spec.output_dim, activation, **kwargs)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Pre-activation output, [B, out_dim]."""
        check_features(h, self.in_dim, "h_tower")
        return self.mlp(h)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.logits(h)
        if self.activation == "sigmoid":
            return torch.sigmoid(z)
        if self.activation == "softmax":
            return torch.softmax(z, dim=-1)
        return z


class GroupTaskExpertBasket(nn.Module):
    """Group task experts with soft cluster routing (eq-group-encoder, eq-soft-cluster).

    One GroupEncoder MLP per task group, shared by the tasks of the group; a per-task head
    Linear -> expert_dim; one ClusterEmbedding table E [num_clusters, cluster_dim],
    e = p @ E. cluster_input says where e enters:

    * "encoder" (the post's diagram): h_k = Head_k(Enc_g([x_k || e]))   (576 -> 128 -> 64 -> 32)
    * "head"    (the post's formula): h_k = Head_k([Enc_g(x_k) || e])   (544 -> 128 -> 64, 96 -> 32)

    x: [B, K, input_dim] (x_k = [CGC output of task k || its HMM projection], rows in
    `task_names` order: the order given, else group by group); cluster_probs: [B, num_clusters]
    (GMM posteriors; integer ids [B] give hard routing). Returns h_expert [B, K, expert_dim].
    """

    def __init__(
        self,
        task_groups: Mapping[str, Sequence[str]],
        input_dim: int = 544,
        group_dims: Sequence[int] = (128, 64),
        expert_dim: int = EXPERT_DIM,
        num_clusters: int = 20,
        cluster_dim: int = 32,
        cluster_input: str = "encoder",
        dropout: float = 0.0,
        task_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if cluster_input not in ("encoder", "head"):
            raise ValueError(f"cluster_input must be 'encoder' or 'head'; got {cluster_input!r}")
        names = [t for tasks in task_groups.values() for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"a task appears in two groups: {names}")
        if not names:
            raise ValueError("task_groups is empty")
        if task_names is not None:
            if sorted(task_names) != sorted(names):
                raise ValueError(f"task_names {list(task_names)} are not the tasks of task_groups {names}")
            names = list(task_names)
        self.task_names = tuple(names)
        self.group_names = tuple(task_groups)
        self.input_dim, self.expert_dim = int(input_dim), int(expert_dim)
        self.cluster_input = cluster_input
        self.cluster_embedding = ClusterEmbedding(num_clusters, cluster_dim)
        enc_in = input_dim + (cluster_dim if cluster_input == "encoder" else 0)
        self.encoders = nn.ModuleDict(
            {g: MLP(enc_in, list(group_dims), None, dropout=dropout) for g in self.group_names}
        )
        head_in = group_dims[-1] + (cluster_dim if cluster_input == "head" else 0)
        self.heads = StackedLinear(len(names), head_in, expert_dim)  # one Linear per task, [K, in, out]
        # task positions of each group, in task_names order
        self._group_index = {
            g: torch.tensor([self.task_names.index(t) for t in task_groups[g]]) for g in self.group_names
        }
        # fast path: when every group is a contiguous run of rows (the registry's order), the groups
        # are cut with torch.split, whose backward needs no zero-filled scatter of the whole input
        pos = [i for g in self.group_names for i in self._group_index[g].tolist()]
        self._contiguous = pos == list(range(len(names)))
        self._group_sizes = [len(task_groups[g]) for g in self.group_names]

    def forward(self, x: torch.Tensor, cluster_probs: torch.Tensor) -> torch.Tensor:
        K = len(self.task_names)
        if x.dim() != 3 or x.shape[1] != K or x.shape[2] != self.input_dim:
            raise ValueError(f"x has shape {_shape(x)}; expected [B, {K}, {self.input_dim}] (tasks, input_dim)")
        if not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf")
        if cluster_probs.shape[0] != x.shape[0]:
            raise ValueError(f"cluster_probs has shape {_shape(cluster_probs)}; expected batch {x.shape[0]}")
        B = x.shape[0]
        e = self.cluster_embedding(cluster_probs)  # [B, cluster_dim]
        e_k = e[:, None, :].expand(B, K, e.shape[1])
        enc_x = torch.cat([x, e_k], dim=2) if self.cluster_input == "encoder" else x
        if self._contiguous:  # one encoder call per group, batched over its tasks
            parts = torch.split(enc_x, self._group_sizes, dim=1)
            z = torch.cat([self.encoders[g](xg.reshape(-1, xg.shape[2])).reshape(B, xg.shape[1], -1)
                           for g, xg in zip(self.group_names, parts)], dim=1)
        else:
            z = x.new_empty(B, K, self.encoders[self.group_names[0]].out_features)
            for g in self.group_names:
                idx = self._group_index[g].to(x.device)
                xg = enc_x.index_select(1, idx)
                z[:, idx] = self.encoders[g](xg.reshape(-1, xg.shape[2])).reshape(B, len(idx), -1)
        head_x = torch.cat([z, e_k], dim=2) if self.cluster_input == "head" else z
        return self.heads(head_x)


class ClusterTaskExpertBasket(nn.Module):
    """Legacy task side: an independent MLP per (task, cluster), hard routing (eq-legacy-basket).

    h_k = MLP_{k, c(x)}(x_k), c(x) = argmax_c p_c(x), MLP = Linear -> LN -> SiLU (-> Dropout) per
    hidden width, then Linear -> expert_dim. Weights of all K x C MLPs are stored stacked
    ([K, C, ...]) and evaluated cluster by cluster, batched over tasks.
    x: [B, K, input_dim]; clusters: [B] int64 ids or [B, C] posteriors (argmax is taken).
    Returns [B, K, expert_dim].
    """

    def __init__(
        self,
        task_names: Sequence[str],
        input_dim: int = 544,
        hidden_dims: Sequence[int] = (16,),
        expert_dim: int = EXPERT_DIM,
        num_clusters: int = 20,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.task_names = tuple(task_names)
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"task_names has duplicates: {list(self.task_names)}")
        self.input_dim, self.expert_dim, self.num_clusters = int(input_dim), int(expert_dim), int(num_clusters)
        K, C = len(self.task_names), self.num_clusters
        dims = [input_dim, *hidden_dims, expert_dim]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.ln_weights = nn.ParameterList()
        self.ln_biases = nn.ParameterList()
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(K, C, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(K, C, d_out).uniform_(-bound, bound)))
            if i < len(dims) - 2:
                self.ln_weights.append(nn.Parameter(torch.ones(K, C, d_out)))
                self.ln_biases.append(nn.Parameter(torch.zeros(K, C, d_out)))
        self.dropout = nn.Dropout(dropout)

    def _cluster_ids(self, clusters: torch.Tensor, batch: int) -> torch.Tensor:
        if clusters.is_floating_point():
            if clusters.dim() != 2 or clusters.shape[1] != self.num_clusters:
                raise ValueError(f"cluster posteriors have shape {_shape(clusters)}; expected [B, {self.num_clusters}]")
            clusters = clusters.argmax(dim=1)
        if clusters.dim() != 1 or clusters.shape[0] != batch:
            raise ValueError(f"cluster ids have shape {_shape(clusters)}; expected [{batch}]")
        if ((clusters < 0) | (clusters >= self.num_clusters)).any():
            raise ValueError(f"cluster ids must lie in [0, {self.num_clusters})")
        return clusters

    def forward(self, x: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        K = len(self.task_names)
        if x.dim() != 3 or x.shape[1] != K or x.shape[2] != self.input_dim:
            raise ValueError(f"x has shape {_shape(x)}; expected [B, {K}, {self.input_dim}] (tasks, input_dim)")
        ids = self._cluster_ids(clusters, x.shape[0])
        out = x.new_zeros(x.shape[0], K, self.expert_dim)
        n_layers = len(self.weights)
        for c in torch.unique(ids).tolist():
            rows = (ids == c).nonzero(as_tuple=True)[0]
            h = x[rows]  # [b, K, d]
            for i in range(n_layers):
                h = torch.einsum("bki,kio->bko", h, self.weights[i][:, c]) + self.biases[i][:, c]
                if i < n_layers - 1:
                    h = nn.functional.layer_norm(h, h.shape[-1:]) * self.ln_weights[i][:, c] + self.ln_biases[i][:, c]
                    h = self.dropout(nn.functional.silu(h))
            out[rows] = h
        return out


class TaskSide(nn.Module):
    """The task side of the system: basket -> logit transfer in Kahn order -> towers.

    h_expert = basket(x, clusters)                      (eq-group-encoder or eq-legacy-basket)
    h_tower_t = transfer(t, h_expert_t, preds, hiddens)  (eq-logit-transfer), t in Kahn order
    pred_t = tower_t(h_tower_t)                          (eq-task-tower)

    x: [B, K, input_dim], one row per task in `task_names` order; clusters: [B, C] GMM
    posteriors (soft routing) or [B] int64 ids (hard routing). Contrastive tasks get a trainable
    item table `item_embeddings[name]` [num_classes, output_dim] (the InfoNCE keys).
    basket: "group" (GroupTaskExpertBasket) or "legacy" (ClusterTaskExpertBasket).
    transfer_edges: (source, target, mode) triples among the tasks; () switches transfer off.
    """

    def __init__(
        self,
        tasks: Sequence[TaskSpec],
        input_dim: int = 544,
        basket: str = "group",
        group_dims: Sequence[int] = (128, 64),
        legacy_hidden_dims: Sequence[int] = (16,),
        expert_dim: int = EXPERT_DIM,
        num_clusters: int = 20,
        cluster_dim: int = 32,
        cluster_input: str = "encoder",
        transfer_edges: Sequence[Sequence] = (),
        transfer_strength: float = 0.5,
        tower_hidden_dims: Sequence[int] = TOWER_HIDDEN_DIMS,
        tower_dropout: float = TOWER_DROPOUT,
        basket_dropout: float = 0.0,
    ):
        super().__init__()
        self.specs = {t.name: t for t in tasks}
        self.task_names = tuple(self.specs)
        if basket == "group":
            groups: dict[str, list[str]] = {}
            for t in tasks:
                groups.setdefault(t.group, []).append(t.name)
            self.basket = GroupTaskExpertBasket(
                groups, input_dim, group_dims, expert_dim, num_clusters, cluster_dim, cluster_input,
                basket_dropout, task_names=self.task_names,
            )
        elif basket == "legacy":
            self.basket = ClusterTaskExpertBasket(
                self.task_names, input_dim, legacy_hidden_dims, expert_dim, num_clusters, basket_dropout
            )
        else:
            raise ValueError(f"basket must be 'group' or 'legacy'; got {basket!r}")
        self.basket_kind = basket
        self.transfer = LogitTransfer(
            self.task_names, transfer_edges, {n: s.output_dim for n, s in self.specs.items()},
            expert_dim, transfer_strength,
        )
        self.towers = nn.ModuleDict(
            {n: TaskTower.from_spec(s, in_dim=expert_dim, hidden_dims=tower_hidden_dims, dropout=tower_dropout)
             for n, s in self.specs.items()}
        )
        self.item_embeddings = nn.ParameterDict(
            {n: nn.Parameter(torch.randn(s.num_classes, s.output_dim) * s.output_dim**-0.5)
             for n, s in self.specs.items() if s.task_type == "contrastive"}
        )

    def forward(self, x: torch.Tensor, clusters: torch.Tensor, return_hidden: bool = False):
        """-> {task: prediction [B, output_dim]} (and {task: h_tower [B, expert_dim]})."""
        if x.dim() != 3 or x.shape[1] != len(self.task_names):
            raise ValueError(f"x has shape {_shape(x)}; expected [B, {len(self.task_names)}, input_dim]")
        h_expert = self.basket(x, clusters)  # [B, K, expert_dim], rows in task_names order
        preds: dict[str, torch.Tensor] = {}
        hiddens: dict[str, torch.Tensor] = {}
        for name in self.transfer.order:
            k = self.task_names.index(name)
            hiddens[name] = self.transfer(name, h_expert[:, k], preds, hiddens)
            preds[name] = self.towers[name](hiddens[name])
        preds = {n: preds[n] for n in self.task_names}
        return (preds, hiddens) if return_hidden else preds

    def task_losses(
        self,
        preds: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        masks: Mapping[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-task losses (eq-losses, eq-masked-mean) of the tasks present in `targets`."""
        out = {}
        for name, y in targets.items():
            if name not in self.specs:
                raise ValueError(f"unknown task {name!r}; this task side predicts {list(self.task_names)}")
            keys = self.item_embeddings[name] if name in self.item_embeddings else None
            mask = None if masks is None else masks.get(name)
            out[name] = task_loss(self.specs[name], preds[name], y, mask=mask, keys=keys)
        return out
