"""What trained connections learned: their mixing coefficients, how far each moved from the start that makes the
connected network the plain one, and (MUDD) statistics of the weights it generates for a sample input.

``inspect_connections(model, sample=None)`` returns one ``ConnectionReport`` per ``StageConnection`` of a model;
``plot_connections(reports, path)`` draws their coefficients as heat maps, ``plot_moves(history, path)`` the largest
move of each connection over a run's checkpoints. Meaning of each kind: docs/connections.md.
"""
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from densezoo.layers.connections import DepthWeightedAverage, MultiwayDynamicDense, StageConnection

__all__ = ['ConnectionReport', 'inspect_connections', 'start_values', 'dwa_matrix', 'plot_connections',
           'plot_moves']


@dataclass
class ConnectionReport:
    """One connection of a model: where it is, what kind, its coefficients and how far they moved."""
    name: str  # the module name of the connection in the model
    kind: str
    num_blocks: int
    #: parameter name -> root-mean-square change from its start value (only parameters whose start is fixed)
    moved: Dict[str, float] = field(default_factory=dict)
    #: readable coefficients: 'alphas' (DWA, blocks x inputs, NaN where none), 'alpha' / 'beta' (ReZero, LAuReL),
    #: 'lambdas' (value residual), 'bias.<i>' (MUDD's static weights after block i), 'scale' (RiR projections)
    coefficients: Dict[str, torch.Tensor] = field(default_factory=dict)
    #: MUDD with a sample: 'mean.<i>' / 'std.<i>' of the generated weights after block i over all positions
    dynamic: Dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self) -> str:
        """One line: name, kind and the largest move."""
        if not self.moved:
            return f'{self.name}: {self.kind}, {self.num_blocks} blocks, no parameter with a fixed start'
        key = max(self.moved, key=self.moved.get)
        return f'{self.name}: {self.kind}, {self.num_blocks} blocks, largest move {self.moved[key]:.4g} ({key})'


def start_values(connection: StageConnection) -> Dict[str, torch.Tensor]:
    """The start values of the connection's parameters that ``reset_parameters`` fixes (two resets under different
    seeds agree on them; randomly initialised ones, such as MUDD's first generator layer, are left out). The global
    random state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        resets = []
        for seed in (0, 1):
            torch.manual_seed(seed)
            fresh = copy.deepcopy(connection)
            fresh.reset_parameters()
            resets.append(dict(fresh.named_parameters()))
    first, second = resets
    return {name: value.detach() for name, value in first.items() if torch.equal(value, second[name])}


def dwa_matrix(connection: DepthWeightedAverage) -> torch.Tensor:
    """DWA's weights as a (blocks, blocks + 1) matrix: row i holds the weights of the average after block i over the
    stored outputs X_0 .. X_{i+1} (column j: X_j); NaN where the average takes no X_j (dilation) or there is no
    average after block i (period)."""
    matrix = torch.full((connection.num_blocks, connection.num_blocks + 1), math.nan)
    for key, alpha in connection.alphas.items():
        i = int(key)
        columns = list(range(i + 2))[(i + 1) % connection.dilation::connection.dilation]
        matrix[i, columns] = alpha.detach().float().cpu()
    return matrix


def _coefficients(connection: StageConnection) -> Dict[str, torch.Tensor]:
    if isinstance(connection, DepthWeightedAverage):
        return {'alphas': dwa_matrix(connection)}
    if isinstance(connection, MultiwayDynamicDense):
        return {f'bias.{i}': bias.detach().float().cpu() for i, bias in enumerate(connection.bias)}
    out = {}
    for attribute, key in (('alpha', 'alpha'), ('beta', 'beta'), ('weights', 'lambdas')):
        value = getattr(connection, attribute, None)
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            out[key] = value.detach().float().cpu()
    if connection.kind == 'rir':  # each projection's mean diagonal times the residual scale: 1 at the start
        scales = [torch.diagonal(w.detach().float()[..., 1, 1] if w.dim() == 4 else w.detach().float()).mean()
                  for w in connection.weight]
        out['scale'] = torch.stack(scales).cpu() * connection.residual_scale
    return out


def _record_dynamic(connections: Dict[str, MultiwayDynamicDense], model: nn.Module, sample) -> Dict[str, Dict]:
    """Run ``model(sample)`` and collect, per MUDD connection and block, the mean and std of the generated weights
    over all positions."""
    sums: Dict[str, Dict[int, List[torch.Tensor]]] = {name: {} for name in connections}
    for name, connection in connections.items():
        def record(index, y, _name=name, _original=connection.dynamic_weights):
            weights = _original(index, y)
            flat = weights.detach().float().reshape(-1, *weights.shape[-2:])
            sums[_name].setdefault(index, []).append(flat)
            return weights
        connection.dynamic_weights = record  # an instance attribute over the method, removed afterwards
    try:
        with torch.no_grad():
            model(sample)
    finally:
        for name, connection in connections.items():
            del connection.dynamic_weights
    return {name: {index: torch.cat(chunks) for index, chunks in blocks.items()} for name, blocks in sums.items()}


def inspect_connections(model: nn.Module, sample: Optional[torch.Tensor] = None) -> List[ConnectionReport]:
    """A report per connection of ``model`` (in module order). With ``sample`` (an input batch) the model runs once
    in its current mode and MUDD connections report the statistics of their generated weights."""
    connections = [(name, module) for name, module in model.named_modules() if isinstance(module, StageConnection)]
    dynamic = {}
    if sample is not None:
        mudd = {name: module for name, module in connections if isinstance(module, MultiwayDynamicDense)}
        dynamic = _record_dynamic(mudd, model, sample) if mudd else {}
    reports = []
    for name, connection in connections:
        params = dict(connection.named_parameters())
        moved = {key: float((params[key].detach().float() - start.float()).pow(2).mean().sqrt())
                 for key, start in start_values(connection).items()}
        report = ConnectionReport(name=name, kind=connection.kind, num_blocks=connection.num_blocks, moved=moved,
                                  coefficients=_coefficients(connection))
        for index, weights in sorted(dynamic.get(name, {}).items()):
            report.dynamic[f'mean.{index}'] = weights.mean(0).cpu()
            report.dynamic[f'std.{index}'] = weights.std(0, unbiased=False).cpu()
        reports.append(report)
    return reports


def plot_connections(reports: List[ConnectionReport], path) -> Path:
    """Heat maps of each report's matrices (DWA weights, MUDD static and mean dynamic weights) and bars of its
    per-block coefficients, one row per connection, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = []
    for report in reports:
        panels = [(key, value) for key, value in {**report.coefficients, **report.dynamic}.items()
                  if not key.startswith('std.')]
        for start in range(0, len(panels), 6):  # at most six panels a row: MUDD has two per block
            rows.append((report, panels[start:start + 6]))
    if not rows:
        raise ValueError('no connection with coefficients to plot; the model has no connection, or only connections '
                         'without mixing coefficients (residual, dense)')
    columns = max(len(panels) for _, panels in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.6 * columns, 2.4 * len(rows)), squeeze=False)
    for r, (report, panels) in enumerate(rows):
        for c in range(columns):
            ax = axes[r][c]
            if c >= len(panels):
                ax.axis('off')
                continue
            key, value = panels[c]
            if value.dim() == 2:
                image = ax.imshow(value.numpy(), cmap='RdBu_r', vmin=-1.5, vmax=1.5)
                if value.numel() <= 64:  # small matrices carry their values: moves of a few hundredths show
                    for (i, j), v in np.ndenumerate(value.numpy()):
                        if v == v:
                            ax.text(j, i, f'{v:.2f}', ha='center', va='center', fontsize=6)
                ax.set_xlabel('input X_j')
                ax.set_ylabel('block' if key == 'alphas' else 'stream')
                fig.colorbar(image, ax=ax, fraction=0.046)
            else:
                ax.bar(range(len(value)), value.numpy())
                ax.set_xlabel('block' if key != 'scale' else 'group')
            ax.set_title(f'{report.name or "model"}\n{key}', fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_moves(history: Sequence[Tuple[int, List[ConnectionReport]]], path) -> Path:
    """The largest move of each connection (its parameter furthest from its start, RMS) against the training step,
    from ``(step, reports)`` pairs, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    lines: Dict[str, List[Tuple[int, float]]] = {}
    for step, reports in sorted(history, key=lambda item: item[0]):
        for report in reports:
            if report.moved:
                lines.setdefault(f'{report.name or "model"} ({report.kind})', []).append(
                    (step, max(report.moved.values())))
    if not lines:
        raise ValueError('no connection with parameters of a fixed start; nothing moved to plot')
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, points in lines.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker='o', markersize=3, label=label)
    ax.set_xlabel('training step')
    ax.set_ylabel('largest move from the start (RMS)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
