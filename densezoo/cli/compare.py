"""Compare connections on one config: train it per connection and seed, then tabulate the task's metric (mean ±
std over seeds) beside params, MACs, latency and training peak memory, and plot the metric against MACs.

    python tools/compare.py configs/study/sr_swinir_x2.yaml --connections residual dwa mudd --seeds 3
    torchrun --nproc_per_node 2 tools/compare.py configs/study/swin_digits.yaml --connections residual dwa --seeds 2

``residual`` is the config's plain model, any other kind its variant ``<model>_<kind>``. Each run is an ordinary run
folder OUT/<kind>-seed<s>; the runs of a seed see the same data. Rerunning resumes stopped runs and keeps finished
ones. ``{seed}`` in an --opt value is each run's seed. Writes OUT/compare.json, compare.md, compare.png.
"""
import argparse
import json
import logging
import os
import statistics
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import timm
import torch

from densezoo import CONNECTION_KINDS
from densezoo.cli.argtypes import device_name, int_at_least
from densezoo.cli.train import EX_TEMPFAIL
from densezoo.config import ConfigError
from densezoo.datasets import DataError
from densezoo.engine import Interrupted, TrainingError, config_to_dict, load_config, resume_config, train
from densezoo.engine.config import task_class
from densezoo.hub.export import open_model
from densezoo.profile.common import format_columns
from densezoo.profile.flops import count
from densezoo.profile.latency import measure_latency
from densezoo.profile.memory import training_step_memory

__all__ = ['ConnectionResult', 'compare', 'main', 'variant_names']


def _base_name(model: str) -> str:
    """The plain model of ``model`` (itself, or ``<base>`` of a registered variant ``<base>_<kind>``)."""
    for kind in CONNECTION_KINDS:
        if model.endswith(f'_{kind}') and timm.is_model(model[:-len(kind) - 1]):
            return model[:-len(kind) - 1]
    return model


def variant_names(model: str, kinds: Sequence[str]) -> Dict[str, str]:
    """The registered model of each connection kind for ``model`` (``residual``: the plain model); a kind the
    model has no variant of is a ``ConfigError`` naming the kinds it has."""
    if not timm.is_model(model):
        raise ConfigError(f'model.name={model!r} is not a registered model; see densezoo.list_models()')
    base = _base_name(model)
    names = {kind: base if kind == 'residual' else f'{base}_{kind}' for kind in kinds}
    missing = [kind for kind, name in names.items() if not timm.is_model(name)]
    if missing:
        available = ['residual'] + [kind for kind in CONNECTION_KINDS if timm.is_model(f'{base}_{kind}')]
        raise ConfigError(f'{base} has no {", ".join(missing)} variant; choose --connections from '
                          f'{", ".join(available)}')
    return names


def _spread(values: Sequence[float]) -> float:
    """The sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class ConnectionResult:
    """One connection of a comparison: its runs (one per seed) and its measurements."""
    connection: str
    model: str
    seeds: List[int]
    run_dirs: List[str]
    metric: List[float]  # the task's main metric at the end of each run
    best: List[float]  # the best validated value of each run
    params: int = 0
    macs: int = 0
    latency_ms: Optional[float] = None
    speed_ratio: Optional[float] = None  # the first connection's latency / this one's (above 1: faster)
    train_peak_bytes: Optional[int] = None
    delta: List[float] = field(default_factory=list)  # metric - the first connection's, seed by seed (paired)
    extra: Dict[str, List[float]] = field(default_factory=dict)  # the task's other final metrics, per seed

    @property
    def mean(self) -> float:
        return statistics.fmean(self.metric)

    @property
    def std(self) -> float:
        return _spread(self.metric)

    def as_dict(self) -> dict:
        values = dict(self.__dict__)
        values.update(mean=self.mean, std=self.std)
        return values

    def delta_text(self) -> str:
        """The paired difference from the first connection: mean ± std over seeds."""
        return f'{statistics.fmean(self.delta):+.4f} ± {_spread(self.delta):.4f}'


def _seeded(overrides: Sequence[str], seed: int) -> List[str]:
    """``overrides`` with ``{seed}`` replaced by a run's seed (e.g. the weights file a run fine-tunes from)."""
    return [o.replace('{seed}', str(seed)) for o in overrides]


def _differences(saved: dict, wanted: dict, prefix: str = '') -> List[str]:
    """Keys whose values differ between two config dicts, as ``key: saved -> wanted``."""
    out = []
    for key in sorted(set(saved) | set(wanted)):
        a, b = saved.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f'{prefix}{key}.')
        elif a != b:
            out.append(f'{prefix}{key}: {a!r} -> {b!r}')
    return out


def _train_one(config, run_dir: Path, progress: Optional[bool]):
    """Train ``config`` in ``run_dir``; a folder with a checkpoint resumes (a finished run returns at once)."""
    resume = (run_dir / 'checkpoints' / 'last').is_symlink()
    if resume:
        saved = config_to_dict(resume_config(run_dir))
        changed = _differences(saved, config_to_dict(config))
        if changed:
            raise ConfigError(f'{run_dir} was trained with another config ({"; ".join(changed[:3])}); give another '
                              f'--out or delete that folder')
    return train(config, run_dir=run_dir, resume=resume, progress=progress)


def _input_size(config, model: torch.nn.Module):
    """(C, H, W) of one training input: the LR patch for SR, the image (crop) size otherwise."""
    data = config.data
    if hasattr(model, 'upscale'):
        patch = getattr(data, 'lr_patch', None) or 48
        return getattr(model, 'in_chans', 3), patch, patch
    size = data.img_size or model.pretrained_cfg.get('input_size', (3, 224, 224))[-1]
    return 3, size, size


def _measure(results: List[ConnectionResult], config, latency_iters: int, device: str) -> None:
    """Params, MACs, latency (interleaved, ratios against the first connection) and training peak memory of each
    connection's model, opened from its first run."""
    models, inputs = {}, {}
    for result in results:
        model = open_model(result.run_dirs[0]).model.to(device).eval()
        size = _input_size(config, model)
        report = count(model, input_size=size, activations=False)
        result.params, result.macs = report.params, report.macs_fvcore
        batch = torch.randn(config.data.batch_size, *size, device=device)
        model.train()
        result.train_peak_bytes = training_step_memory(model, batch)['peak']
        models[result.connection] = model.eval()
        inputs[result.connection] = torch.randn(1, *size, device=device)
    if latency_iters:
        for result, timed in zip(results, measure_latency(models, inputs, warmup=3, iters=latency_iters,
                                                          memory=False)):
            result.latency_ms, result.speed_ratio = timed.p50_ms, timed.speed_ratio


def _table(results: List[ConnectionResult], metric: str, markdown: bool = False) -> str:
    head = ['connection', 'model', 'params', 'MMACs', 'latency ms (ratio)', 'train peak MiB',
            f'{metric} mean ± std (n)', f'Δ vs {results[0].connection} (paired)', 'per seed']
    rows = []
    for r in results:
        latency = '-' if r.latency_ms is None else f'{r.latency_ms:.2f} ({r.speed_ratio:.2f}x)'
        rows.append([r.connection, r.model, f'{r.params:,}', f'{r.macs / 1e6:.2f}', latency,
                     f'{r.train_peak_bytes / 2 ** 20:.1f}', f'{r.mean:.4f} ± {r.std:.4f} ({len(r.metric)})',
                     r.delta_text(), ' '.join(f'{v:.4f}' for v in r.metric)])
    if not markdown:
        return format_columns(head, rows)
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
    return '\n'.join(lines)


def _plot(results: List[ConnectionResult], metric: str, title: str, path: Path) -> Path:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for r in results:
        macs = r.macs / 1e6
        ax.scatter([macs] * len(r.metric), r.metric, s=10, alpha=0.4)
        ax.errorbar(macs, r.mean, yerr=r.std, fmt='o', capsize=4, color=ax.collections[-1].get_facecolor()[0][:3])
        ax.annotate(r.connection, (macs, r.mean), textcoords='offset points', xytext=(6, 4), fontsize=8)
    ax.set_xlabel('MMACs per image (one forward)')
    ax.set_ylabel(f'{metric} (mean ± std over seeds; dots: runs)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def compare(config_path, connections: Sequence[str], seeds: int, out: Optional[Path] = None,
            overrides: Sequence[str] = (), latency_iters: int = 20, progress: Optional[bool] = None,
            device: str = 'cpu') -> Tuple[Path, str, Optional[List[ConnectionResult]]]:
    """Train and measure every connection × seed in ``out`` (default: ``<output>/compare-<name>`` of the config);
    returns that folder, the metric's name and the results (None in processes other than the first under torchrun,
    which only train)."""
    if len(set(connections)) != len(connections):
        raise ConfigError(f'--connections {" ".join(connections)} names a connection twice')
    first_seed = load_config(config_path, [o for o in overrides if '{seed}' not in o]).seed
    base = load_config(config_path, _seeded(overrides, first_seed))
    if out is None:
        out = Path(base.output) / f'compare-{base.name or Path(config_path).stem}'
    names = variant_names(base.model.name, connections)
    metric = task_class({'task': base.task}).main_metric
    results = []
    for kind in connections:
        results.append(ConnectionResult(kind, names[kind], [], [], [], []))
    for k in range(seeds):  # seed by seed, so that a stopped comparison already holds whole seeds
        for result in results:
            seed = base.seed + k
            config = load_config(config_path, [*_seeded(overrides, seed), f'model.name={result.model}',
                                               f'seed={seed}'])
            run = _train_one(config, out / f'{result.connection}-seed{seed}', progress)
            result.seeds.append(seed)
            result.run_dirs.append(str(run.run_dir))
            result.metric.append(float(run.metrics[metric]))
            result.best.append(float(run.best_metric if run.best_metric is not None else run.metrics[metric]))
            for key, value in run.metrics.items():
                if key != metric and isinstance(value, (int, float)):
                    result.extra.setdefault(key, []).append(float(value))
    for result in results:  # the runs of a seed saw the same data: differences per seed are paired
        result.delta = [a - b for a, b in zip(result.metric, results[0].metric)]
    if int(os.environ.get('RANK', '0')) != 0:
        return out, metric, None
    _measure(results, base, latency_iters, device)
    title = f'{Path(config_path).name}: {base.model.name} ({seeds} seed{"s" if seeds > 1 else ""})'
    payload = dict(config=str(config_path), overrides=list(overrides), metric=metric, seeds=seeds,
                   torch=torch.__version__, timm=timm.__version__, latency_device=device,
                   connections=[r.as_dict() for r in results])
    (out / 'compare.json').write_text(json.dumps(payload, indent=1) + '\n')
    (out / 'compare.md').write_text(f'{title}\n\n{_table(results, metric, markdown=True)}\n')
    _plot(results, metric, title, out / 'compare.png')
    return out, metric, results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', type=Path, help='YAML training config (its model: the plain one or a variant)')
    parser.add_argument('--connections', nargs='+', required=True, metavar='KIND',
                        help=f'connection kinds to compare, the first is the reference of the ratios '
                             f'({", ".join(CONNECTION_KINDS)})')
    parser.add_argument('--seeds', type=int_at_least(1), default=3, help='runs per connection (seeds seed..seed+N-1)')
    parser.add_argument('--out', type=Path, default=None, help='folder of the runs and results (default: '
                                                               '<config output>/compare-<config name>)')
    parser.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE', help='config overrides for every run')
    parser.add_argument('--latency-iters', type=int_at_least(0), default=20,
                        help='timed CPU iterations per model, interleaved (0: no latency)')
    parser.add_argument('--device', type=device_name('cpu', 'cuda'), default='cpu',
                        help='where latency and memory are measured (cpu, cuda or cuda:N; training uses the config)')
    parser.add_argument('--progress', action='store_true', help='show progress bars')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    try:
        if not args.config.is_file():
            raise ConfigError(f'config {args.config} does not exist')
        unknown = [kind for kind in args.connections if kind not in CONNECTION_KINDS]
        if unknown:
            raise ConfigError(f'unknown connection {", ".join(unknown)}; choose from {", ".join(CONNECTION_KINDS)}')
        out, metric, results = compare(args.config, args.connections, args.seeds, args.out, args.opt,
                                       args.latency_iters, progress=args.progress or None, device=args.device)
    except Interrupted:  # its line says where the checkpoint is; rerunning the command continues
        return EX_TEMPFAIL
    except (ConfigError, DataError, TrainingError, ValueError) as err:
        print(f'error: {" ".join(str(err).split())}', file=sys.stderr)
        return 1 if isinstance(err, TrainingError) else 2
    if results is not None:
        print(_table(results, metric))
        print(f'results: {out / "compare.md"}, {out / "compare.json"}, plot: {out / "compare.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
