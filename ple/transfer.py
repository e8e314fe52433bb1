"""ple.transfer -- generated from book/ple5_group_experts_transfer_towers.ipynb.

Do not edit: change the chapter and run `make export`.
"""

from __future__ import annotations

__all__ = ['find_cycle', 'topological_order', 'LogitTransfer']

from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from ple.checks import check_float, check_int, check_tensor, validation_enabled
from ple.tasks import TRANSFER_MODES, TRANSFER_STRENGTH  # ("sequential", "feature", "inverse"), 0.5


def _edge_list(edges: Iterable[Sequence]) -> list[tuple[str, str, str]]:
    out = []
    for e in edges:
        e = tuple(e)
        if len(e) == 2:
            e = (e[0], e[1], "sequential")
        if len(e) != 3:
            raise ValueError(f"transfer edge {e!r} must be (source, target) or (source, target, mode)")
        out.append((str(e[0]), str(e[1]), str(e[2])))
    return out


def find_cycle(tasks: Sequence[str], edges: Iterable[Sequence]) -> list[str] | None:
    """One directed cycle [a, b, ..., a] among `edges`, or None if the graph is acyclic."""
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be a sequence of task names; got {tasks!r}")
    succ: dict[str, list[str]] = {t: [] for t in tasks}
    for s, t, _ in _edge_list(edges):
        succ.setdefault(s, []).append(t)
        succ.setdefault(t, [])
    # Peel sources (Kahn) and sinks: what is left lies on a cycle or between cycles.
    alive = set(succ)
    changed = True
    while changed:
        indeg = {v: 0 for v in alive}
        outdeg = {v: 0 for v in alive}
        for v in alive:
            for w in succ[v]:
                if w in alive:
                    indeg[w] += 1
                    outdeg[v] += 1
        drop = {v for v in alive if indeg[v] == 0 or outdeg[v] == 0}
        changed = bool(drop)
        alive -= drop
    if not alive:
        return None
    # Every remaining node has a successor among the remaining ones: walk until a repeat.
    start = min(alive, key=list(succ).index)
    path, seen = [start], {start: 0}
    while True:
        nxt = next(w for w in succ[path[-1]] if w in alive)
        if nxt in seen:
            return path[seen[nxt]:] + [nxt]
        seen[nxt] = len(path)
        path.append(nxt)


def topological_order(tasks: Sequence[str], edges: Iterable[Sequence]) -> list[str]:
    """Kahn's algorithm: execution order of `tasks` respecting every edge source -> target.

    Tasks with in-degree 0 enter a FIFO queue in the order given; popping a task appends it to
    the order and removes its out-edges; a target whose in-degree drops to 0 joins the queue.
    O(V + E). Raises ValueError naming an unknown task, an unknown mode, a duplicate edge, or
    the tasks on a cycle ("ctr -> cvr -> ctr"); `tasks` must be a sequence of non-empty names
    (a string such as "ctr" is not split into letters).
    """
    if isinstance(tasks, (str, bytes)) or not isinstance(tasks, Iterable):
        raise TypeError(f"tasks must be a sequence of task names; got {tasks!r}")
    tasks = list(tasks)
    bad = [t for t in tasks if not isinstance(t, str) or not t]
    if bad:
        raise ValueError(f"tasks must be non-empty strings; got {bad}")
    dup = sorted({t for t in tasks if tasks.count(t) > 1})
    if dup:
        raise ValueError(f"tasks has duplicates: {dup}")
    known = set(tasks)
    edges = _edge_list(edges)
    succ: dict[str, list[str]] = {t: [] for t in tasks}
    indeg = dict.fromkeys(tasks, 0)
    seen_pairs = set()
    for s, t, mode in edges:
        for name in (s, t):
            if name not in known:
                raise ValueError(f"transfer edge ({s!r}, {t!r}, {mode!r}) names unknown task {name!r}")
        if mode not in TRANSFER_MODES:
            raise ValueError(f"transfer edge ({s!r}, {t!r}) has unknown mode {mode!r}; expected one of {TRANSFER_MODES}")
        if (s, t) in seen_pairs:
            raise ValueError(f"transfer edge ({s!r}, {t!r}) is given twice")
        seen_pairs.add((s, t))
        succ[s].append(t)
        indeg[t] += 1
    queue = deque(t for t in tasks if indeg[t] == 0)
    order: list[str] = []
    while queue:
        v = queue.popleft()
        order.append(v)
        for w in succ[v]:
            indeg[w] -= 1
            if indeg[w] == 0:
                queue.append(w)
    if len(order) < len(tasks):
        cycle = find_cycle(tasks, edges)
        raise ValueError("transfer edges contain a cycle: " + " -> ".join(cycle))
    return order


class LogitTransfer(nn.Module):
    """Residual logit transfer along a DAG of task edges (eq-logit-transfer).

    h_tower^t = h_expert^t + alpha * sum_{s -> t} SiLU(LN(Linear(x_{s->t}))), alpha = transfer_strength,
    where the transferred input x_{s->t} [B, d_s] depends on the edge's mode:

    * "sequential": x = pred^s, the source's activated prediction (probability / softmax vector);
    * "inverse":    x = 1 - pred^s (binary sources only; churn -> retention);
    * "feature":    x = h_tower^s, the source's own tower input [B, expert_dim] (its hidden
      representation, which already carries the source's own transfers).

    Gradients flow into the source in every mode. `order` is the Kahn order of `tasks`.
    source_dims: task -> width of its prediction (needed for sequential / inverse sources).
    """

    def __init__(
        self,
        tasks: Sequence[str],
        edges: Iterable[Sequence],
        source_dims: Mapping[str, int],
        expert_dim: int = 32,
        transfer_strength: float = TRANSFER_STRENGTH,
    ):
        super().__init__()
        self.edges = _edge_list(edges)
        self.order = topological_order(tasks, self.edges)
        clash = [t for t in self.order if "__" in t or "." in t]
        if clash:  # "a__b" -> "c" and "a" -> "b__c" would share the projection key "a__b__c"
            raise ValueError(f"tasks must not contain '__' or '.' (projection keys join names with '__'); got {clash}")
        self.expert_dim = check_int("expert_dim", expert_dim)
        self.transfer_strength = check_float("transfer_strength", transfer_strength)
        self.projections = nn.ModuleDict()
        for s, t, mode in self.edges:
            if mode == "feature":
                d_in = self.expert_dim
            else:
                if s not in source_dims:
                    raise ValueError(f"source_dims lacks the prediction width of source task {s!r}")
                d_in = check_int(f"source_dims[{s!r}]", source_dims[s])
                if mode == "inverse" and d_in != 1:
                    raise ValueError(f"inverse transfer needs a binary source; {s!r} predicts {d_in} values")
            self.projections[self.key(s, t)] = nn.Sequential(
                nn.Linear(d_in, self.expert_dim), nn.LayerNorm(self.expert_dim), nn.SiLU()
            )

    @staticmethod
    def key(source: str, target: str) -> str:
        return f"{source}__{target}"

    def sources(self, target: str) -> list[tuple[str, str]]:
        """(source, mode) of every edge into `target`."""
        return [(s, m) for s, t, m in self.edges if t == target]

    def transfer_input(self, source: str, mode: str, preds: Mapping[str, torch.Tensor],
                       hiddens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """x_{s->t} of eq-logit-transfer for one edge, [B, d_s]."""
        table = hiddens if mode == "feature" else preds
        if source not in table:
            what = "h_tower" if mode == "feature" else "prediction"
            raise ValueError(f"the {what} of source task {source!r} is missing: run tasks in `order`")
        x = table[source]
        if x.dim() == 1:
            x = x[:, None]
        if mode == "inverse":  # 1 - p is a probability only for p in [0, 1] (a device sync: validation only)
            if validation_enabled() and x.numel() and bool((x.amin() < 0) | (x.amax() > 1)):
                raise ValueError(
                    f"preds[{source!r}] feeds an inverse edge and must lie in [0, 1] (a probability); "
                    f"got values from {x.amin().item():g} to {x.amax().item():g}"
                )
            return 1.0 - x
        return x

    def residual(self, source: str, target: str, x: torch.Tensor) -> torch.Tensor:
        """alpha * SiLU(LN(Linear(x))) for the edge source -> target, [B, expert_dim]."""
        return self.transfer_strength * self.projections[self.key(source, target)](x)

    def forward(
        self,
        target: str,
        h_expert: torch.Tensor,
        preds: Mapping[str, torch.Tensor],
        hiddens: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """h_expert [B, expert_dim] of task `target` -> h_tower [B, expert_dim]."""
        if target not in self.order:
            raise ValueError(f"target {target!r} is not a task of this transfer; the tasks are {self.order}")
        check_tensor(h_expert, "h_expert", ["B", self.expert_dim], "expert_dim")
        out = h_expert
        for source, mode in self.sources(target):
            x = self.transfer_input(source, mode, preds, hiddens or {})
            out = out + self.residual(source, target, x)
        return out
