"""Run logs: JSON lines, CSV, TensorBoard events and the training-curve PNG."""
import csv
import json
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from densezoo.engine.faults import TrainingError

__all__ = ['RunLogger', 'plot_curves', 'csv_fields', 'read_records']


def csv_fields(metrics: Sequence[str] = ('top1', 'top5')) -> List[str]:
    """The columns of ``log.csv`` for a task whose validation reports ``metrics``."""
    return ['kind', 'epoch', 'step', 'lr', 'loss', *metrics, 'images_per_s', 'elapsed_s']


CSV_FIELDS = csv_fields()  # classification's
_logger = logging.getLogger(__name__)


def read_records(path: Path) -> List[Dict]:
    """The records of a ``log.jsonl``. A half-written last line (a run killed while logging) is dropped with a
    warning; an unreadable line before it is a one-line ``TrainingError`` naming the file and the line."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get('step'), int):
                raise ValueError('not a record with a step')
        except ValueError as err:
            if number == len(lines):
                _logger.warning(f'{path}: dropped its last line {number}, written only in part ({err}); the run '
                                f'was stopped while logging')
                break
            raise TrainingError(f'{path} line {number} is not a log record ({err}); repair or delete that '
                                f'line') from None
        records.append(record)
    return records


class RunLogger:
    """Appends records to ``log.jsonl`` and ``log.csv`` and scalars to TensorBoard, in the run folder.

    On resume, ``resume_step`` drops records after the checkpoint's step (they belong to the part of the run that
    is replayed) and purges TensorBoard events from that step on.
    """

    def __init__(self, run_dir: Path, resume_step: Optional[int] = None, tensorboard: bool = True,
                 metrics: Sequence[str] = ('top1', 'top5')):
        self.run_dir = run_dir
        self.fields = csv_fields(metrics)
        self.jsonl = run_dir / 'log.jsonl'
        self.csv = run_dir / 'log.csv'
        self.records: List[Dict] = []
        if resume_step is not None and self.jsonl.is_file():
            self.records = [r for r in read_records(self.jsonl) if r['step'] <= resume_step]
        self._rewrite()
        self.writer = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            purge = resume_step + 1 if resume_step is not None else None
            self.writer = SummaryWriter(str(run_dir / 'tensorboard'), purge_step=purge)

    def _rewrite(self) -> None:
        with open(self.jsonl, 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in self.records)
        with open(self.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=self.fields, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(self.records)

    def log(self, kind: str, step: int, epoch: int, **values) -> None:
        """Record ``values`` (floats) of ``kind`` ('train' or 'val') at optimizer step ``step``."""
        record = dict(kind=kind, epoch=epoch, step=step, **values)
        self.records.append(record)
        with open(self.jsonl, 'a') as f:
            f.write(json.dumps(record) + '\n')
        with open(self.csv, 'a', newline='') as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction='ignore').writerow(record)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f'{kind}/{key}', value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(records: List[Dict], path: Path, metric: str) -> Path:
    """Training loss per step and validation loss / ``metric`` per epoch, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    train = [r for r in records if r['kind'] == 'train']
    val = [r for r in records if r['kind'] == 'val']
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([r['step'] for r in train], [r['loss'] for r in train], label='train loss')
    if val:
        ax_loss.plot([r['step'] for r in val], [r['loss'] for r in val], 'o-', label='validation loss')
        ax_metric.plot([r['step'] for r in val], [r[metric] for r in val], 'o-', color='tab:green')
    ax_loss.set_xlabel('optimizer step')
    ax_loss.set_ylabel('loss')
    ax_loss.legend()
    ax_metric.set_xlabel('optimizer step')
    units = {'top1': ' (%)', 'top5': ' (%)', 'psnr': ' (dB)'}
    ax_metric.set_ylabel(f'validation {metric}{units.get(metric, "")}')
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
