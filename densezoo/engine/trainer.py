"""The training loop shared by every task: optimizer, schedule, AMP, EMA, accumulation, clipping, DDP,
checkpoints that resume exactly, logs and progress.

Exact resumption: checkpoints are taken between optimizer steps and hold the optimizer, scheduler, scaler and EMA,
the RNG states of every process and the position in the epoch. Data order depends only on (seed, epoch) and each
sample's augmentation only on (seed, epoch, index), so a resumed run replays exactly the batches the interrupted
one would have seen; on the CPU it ends bit-identical to a run that was never interrupted. SIGTERM and SIGINT stop
a run at the next step boundary, after writing a checkpoint (``Interrupted``); a full or read-only disk stops it
with an ``OutputError`` that keeps the last good checkpoint.
"""
import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
import torch.distributed as dist
import yaml
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from safetensors import SafetensorError
from timm.utils import ModelEmaV3, dispatch_clip_grad
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from densezoo.datasets import EpochSampler, preserved_rng
from densezoo.engine.checkpoint import (CheckpointError, checkpoint_folders, latest_checkpoint, load_checkpoint,
                                        rng_state, save_checkpoint, seed_everything, set_rng_state)
from densezoo.engine.config import TrainConfig, config_to_dict
from densezoo.distributed import barrier, init_distributed
from densezoo.engine.faults import (NO_SPACE, Interrupted, NonFiniteLossError, OutputError, TrainingError,
                                    disk_errno, resume_command, write_errno)
from densezoo.engine.logger import RunLogger, plot_curves
from densezoo.tasks import create_task

__all__ = ['Trainer', 'RunResult']

_logger = logging.getLogger(__name__)
AMP_DTYPES = {'bf16': torch.bfloat16, 'fp16': torch.float16}


def _ignore_stop_signals(worker_id: int) -> None:
    """In a DataLoader worker: leave SIGTERM and SIGINT to the training process. Ctrl-C and cluster schedulers signal
    the whole process group; a worker killed by the signal would abort the run before it writes its checkpoint. The
    training process stops at the next step and shuts its workers down."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class RunResult:
    """What a finished run produced."""
    run_dir: Path
    steps: int
    best_metric: Optional[float] = None
    best_step: Optional[int] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    curve: Optional[Path] = None
    outputs: Dict[str, object] = field(default_factory=dict)  # what the task wrote at the end (e.g. sample images)


def _show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get('CI')


def _batches(loader: DataLoader):
    """The batches of ``loader``; making them (seeded per sample) leaves the training RNG states as they were."""
    iterator = iter(loader)
    while True:
        with preserved_rng():
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


class Trainer:
    """Trains ``config`` in ``run_dir``; with ``resume`` it continues from the run's last checkpoint."""

    def __init__(self, config: TrainConfig, run_dir: Path, resume: bool = False, progress: Optional[bool] = None):
        self.config = config
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / 'checkpoints'
        self.resuming = resume
        self.dist = init_distributed(config.device)
        self.device = self.dist.device
        self.progress = _show_progress() if progress is None else progress
        if self.dist.is_main:  # before the model and data are built: a read-only output fails at once
            self._check_writable()
        self.task = create_task(config, self.dist)

        seed_everything(config.seed)  # the same initial weights in every process
        self.model = self.task.build_model().to(self.device)
        self.memory_format = torch.channels_last if config.model.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        if config.model.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.ema = ModelEmaV3(self.model, decay=config.ema_decay, use_warmup=config.ema_warmup) \
            if config.ema_decay else None

        self.train_set, self.val_set = self.task.build_datasets(self.model)
        self.train_set.restore_rng = False  # _batches restores the RNG states once per batch instead
        self._build_samplers()
        if self.dist.is_main:  # model and data are usable: the run folder can exist
            with self._writing('create run folder', self.run_dir):
                self.run_dir.mkdir(parents=True, exist_ok=True)
            if not resume:
                with self._writing('write config.yaml to', self.run_dir):
                    (self.run_dir / 'config.yaml').write_text(
                        yaml.safe_dump(config_to_dict(config), sort_keys=False))
        self.optimizer = self._make_optimizer(self.model, config.optim)
        self.scheduler = self._make_scheduler(self.optimizer, config.sched)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == 'fp16')
        self.task.build_training(self.model, self.device, self._make_optimizer, self._make_scheduler)

        self.train_model = self.model
        if config.model.compile:
            self.train_model = torch.compile(self.model, backend=config.model.compile_backend)
        if self.dist.enabled:
            self.train_model = DistributedDataParallel(
                self.train_model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)

        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.best_metric: Optional[float] = None
        self.best_step: Optional[int] = None
        self.last_metrics: Dict[str, float] = {}
        resume_step = self._resume() if resume else None
        if resume_step is None:  # stochastic depth, dropout and mixup differ between processes from here
            seed_everything(config.seed * 1000 + self.dist.rank + 1)
        self._start_step = self._saved_step = self.global_step  # the newest checkpoint's step (0: none yet)
        self._signal = 0  # the signal that asked this process to stop, 0 while none did
        self._window_extras: Dict[str, float] = {}  # sums of what the task's after_step returned since the last log
        self.logger = None
        if self.dist.is_main:
            with self._writing('write logs to', self.run_dir):
                self.logger = RunLogger(self.run_dir, resume_step=resume_step, metrics=self.task.log_metrics)

    # ------------------------------------------------------------------------------------------------------------
    def _make_optimizer(self, module: torch.nn.Module, optim) -> torch.optim.Optimizer:
        """timm's optimizer for ``module`` from an optim section."""
        return create_optimizer_v2(
            module, opt=optim.name, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum,
            layer_decay=optim.layer_decay, **optim.kwargs)

    def _make_scheduler(self, optimizer: torch.optim.Optimizer, sched):
        """timm's schedule for ``optimizer`` from a sched section, updated every optimizer step; its times count
        epochs or, with unit 'steps', steps."""
        if sched.unit == 'epochs':
            per_unit, length = self.steps_per_epoch, self.epochs
        else:
            per_unit, length = 1, self.config.max_steps or self.epochs * self.steps_per_epoch
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=sched.name, num_epochs=length, warmup_epochs=sched.warmup_epochs,
            warmup_lr=sched.warmup_lr, min_lr=sched.min_lr, decay_milestones=list(sched.decay_milestones),
            decay_rate=sched.decay_rate, step_on_epochs=False, updates_per_epoch=per_unit)
        return scheduler

    def _build_samplers(self) -> None:
        cfg, info = self.config, self.dist
        self.train_sampler = EpochSampler(len(self.train_set), shuffle=True, seed=cfg.seed, rank=info.rank,
                                          world_size=info.world_size)
        self.val_sampler = EpochSampler(len(self.val_set), shuffle=False, rank=info.rank,
                                        world_size=info.world_size, pad=False)
        micro_batches = len(self.train_sampler) // cfg.data.batch_size
        self.steps_per_epoch = micro_batches // cfg.accumulation_steps
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f'data.batch_size={cfg.data.batch_size} x accumulation_steps={cfg.accumulation_steps} is larger '
                f'than the training set ({len(self.train_sampler)} images per process); lower them')
        # epochs: null trains for as many epochs as max_steps needs
        self.epochs = cfg.epochs or -(-cfg.max_steps // self.steps_per_epoch)

    def _loader(self, dataset, sampler, batch_size: int) -> DataLoader:
        workers = self.config.data.workers
        training = sampler is self.train_sampler
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                          drop_last=training, pin_memory=self.device.type == 'cuda',
                          collate_fn=self.task.collate_fn(training),
                          generator=torch.Generator().manual_seed(self.config.seed),
                          worker_init_fn=_ignore_stop_signals if workers else None,
                          multiprocessing_context='spawn' if workers and sys.platform == 'darwin' else None)

    def _autocast(self):
        if not self.config.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=AMP_DTYPES[self.config.amp])

    # ------------------------------------------------------------------------------------------------------------
    def _state(self) -> Dict[str, object]:
        states = [rng_state()]
        if self.dist.enabled:
            gathered = [None] * self.dist.world_size
            dist.all_gather_object(gathered, states[0])
            states = gathered
        return dict(
            global_step=self.global_step, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict(), rng=states, best_metric=self.best_metric, best_step=self.best_step,
            metrics=self.last_metrics, config=config_to_dict(self.config), task=self.task.training_state())

    def _save(self, best: bool = False) -> None:
        state = self._state()  # every process takes part (RNG gathering)
        if self.dist.is_main:
            save_checkpoint(self.ckpt_dir, self.global_step, self.model, state,
                            ema=self.ema.module if self.ema else None, best=best, keep=self.config.keep_checkpoints,
                            networks=self.task.networks())
        barrier(self.dist)

    def _load_newest_intact(self) -> Tuple[Path, Dict[str, object]]:
        """The newest checkpoint whose files are intact (``last`` first, then older ones) and its state, its weights
        loaded; each one skipped is reported with a warning."""
        folders = checkpoint_folders(self.ckpt_dir)
        if not folders:
            raise TrainingError(f'{self.ckpt_dir} holds no complete checkpoint to resume from; start a new run')
        skipped = []
        for folder in folders:
            try:
                state = load_checkpoint(folder, self.model, self.ema.module if self.ema else None,
                                        networks=self.task.networks())
            except CheckpointError as err:
                skipped.append(f'{self.ckpt_dir.name}/{folder.name}: {err}')
                continue
            if self.dist.is_main:
                for problem in skipped:
                    _logger.warning(f'{problem}; resuming from {self.ckpt_dir.name}/{folder.name} instead')
            return folder, state
        raise TrainingError(f'{self.ckpt_dir} holds no intact checkpoint to resume from ({"; ".join(skipped)}); '
                            f'start a new run')

    def _resume(self) -> int:
        folder, state = self._load_newest_intact()
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        self.scaler.load_state_dict(state['scaler'])
        self.global_step, self.epoch = state['global_step'], state['epoch']
        self.batch_in_epoch = state['batch_in_epoch']
        self.best_metric, self.best_step = state['best_metric'], state['best_step']
        self.last_metrics = state['metrics']
        rng = state['rng']
        set_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        self.scheduler.step_update(num_updates=self.global_step)
        self.task.load_training_state(state.get('task', {}), self.global_step)
        if self.dist.is_main:
            _logger.info(f'resumed from {folder} at step {self.global_step} (epoch {self.epoch})')
        return self.global_step

    # ------------------------------------------------------------------------------------------------------------
    def _lr(self) -> float:
        return max(group['lr'] for group in self.optimizer.param_groups)

    def _check_finite(self, value: float) -> None:
        """Stop every process when the loss ``value`` of any of them is NaN or infinite."""
        finite = math.isfinite(value)
        if self.dist.enabled:
            flag = torch.tensor(int(finite), device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item())
        if not finite:
            last = latest_checkpoint(self.ckpt_dir)
            kept = f'the last good checkpoint is {last}' if last else 'no checkpoint had been written yet'
            raise NonFiniteLossError(
                f'loss is {value} at step {self.global_step + 1} (epoch {self.epoch}); stopped, {kept}; '
                f'lower optim.lr or set optim.clip_grad')

    # ------------------------------------------------------------------------------------------------------------
    def _output_error(self, action: str, folder: Path, code: int, kept: bool) -> OutputError:
        reason = os.strerror(code)
        reason = f'{reason[:1].lower()}{reason[1:]} (errno {code})'
        if code in NO_SPACE:
            fix = 'free space or ' + ('copy the run folder to another disk and resume it from there' if self.resuming
                                      else 'set output= to another disk')
        else:
            fix = ('make it writable or copy the run folder to a writable disk and resume it from there'
                   if self.resuming else 'set output= to a writable folder')
        message = f'cannot {action} {folder}: {reason}; {fix}'
        if kept:
            last = latest_checkpoint(self.ckpt_dir)
            message += (f'; the last good checkpoint is {self.ckpt_dir / last.name}' if last
                        else '; no checkpoint had been written yet')
        return OutputError(message)

    def _check_writable(self) -> None:
        """Fail at once when the run folder cannot be created or written (read-only disk, no permission)."""
        code = disk_errno(self.run_dir, space=False)
        if code is not None:
            action = 'write to run folder' if self.resuming else 'create run folder'
            raise self._output_error(action, self.run_dir, code, kept=False)

    @contextlib.contextmanager
    def _writing(self, action: str, folder: Path, kept: bool = False):
        """Report a write into ``folder`` that failed on a full or read-only disk as a one-line ``OutputError``
        (``kept``: naming the last good checkpoint)."""
        try:
            yield
        except TrainingError:
            raise
        except (OSError, RuntimeError, SafetensorError) as err:
            code = write_errno(err, folder)
            if code is None:
                raise
            raise self._output_error(action, folder, code, kept) from err

    def _save_checkpoint(self, best: bool = False) -> None:
        """``_save``, where a full or read-only disk removes the half-written folder and keeps the last good one."""
        try:
            with self._writing('write checkpoint to', self.ckpt_dir, kept=True):
                self._save(best=best)
        except OutputError:
            if self.dist.is_main:
                for path in self.ckpt_dir.glob('.*.tmp'):  # the temporary folder (and link) of the failed save
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        with contextlib.suppress(OSError):
                            path.unlink()
            raise
        self._saved_step = self.global_step

    def _log(self, kind: str, **values) -> None:
        if self.logger is not None:
            with self._writing('write logs to', self.run_dir, kept=True):
                self.logger.log(kind, self.global_step, self.epoch, **values)

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While training, SIGTERM and SIGINT only ask for a stop at the next step boundary (``_stop_if_requested``);
        further signals change nothing, so a second Ctrl-C cannot break a checkpoint being written. The previous
        handlers come back afterwards. A signal the process ignores (SIGINT in a background job) stays ignored. Only
        the main thread can set handlers; in others, signals act as before."""
        self._signal = 0
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request(signum, frame):
            self._signal = self._signal or signum

        previous = {}
        try:
            for signum in (signal.SIGTERM, signal.SIGINT):
                if signal.getsignal(signum) is not signal.SIG_IGN:
                    previous[signum] = signal.signal(signum, request)
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _stop_if_requested(self) -> None:
        """At a step boundary: when any process received SIGTERM or SIGINT, write a checkpoint (unless the newest one
        is of this step) and raise ``Interrupted``; all processes stop at the same step."""
        signum = self._signal
        if self.dist.enabled:  # one small reduction per step, so that every process takes part in the same save
            flag = torch.tensor(signum, device=self.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        if not signum:
            return
        name = signal.Signals(signum).name
        if self.global_step == 0:
            stop = Interrupted(f'stopped by {name} before the first step; nothing to save, no checkpoint written; '
                               f'start the run again', name, 0, None)
        else:
            unchanged = self.global_step == self._start_step  # resumed, and stopped before its first step
            if self.global_step != self._saved_step:
                self._save_checkpoint()
            last = latest_checkpoint(self.ckpt_dir)
            checkpoint = self.ckpt_dir / last.name if last else self.ckpt_dir
            where = (f'right after resuming; its checkpoint {checkpoint} is unchanged' if unchanged
                     else f'checkpoint written to {checkpoint}')
            stop = Interrupted(f'stopped by {name} at step {self.global_step} (epoch {self.epoch}); {where}; '
                               f'continue with: {resume_command(self.run_dir, self.dist.world_size)}',
                               name, self.global_step, checkpoint)
        if self.dist.is_main:
            print(stop, file=sys.stderr, flush=True)
        barrier(self.dist)  # no process ends (and has torchrun stop the others) before the line is out
        raise stop

    def _optimizer_step(self) -> None:
        cfg = self.config.optim
        if cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            dispatch_clip_grad(self.model.parameters(), cfg.clip_grad, mode=cfg.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)
        self.scheduler.step_update(num_updates=self.global_step)
        for key, value in self.task.after_step(self.global_step, self._autocast).items():
            self._window_extras[key] = self._window_extras.get(key, 0.) + value

    def _train_epoch(self) -> bool:
        """One epoch from the current position; returns False when ``max_steps`` was reached."""
        cfg = self.config
        accumulation = cfg.accumulation_steps
        self.train_set.set_epoch(self.epoch)
        self.train_sampler.set_epoch(self.epoch)
        self.train_sampler.set_start(self.batch_in_epoch * cfg.data.batch_size)
        loader = self._loader(self.train_set, self.train_sampler, cfg.data.batch_size)
        micro_batches = self.steps_per_epoch * accumulation
        self.train_model.train()
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm import tqdm
            bar = tqdm(total=self.steps_per_epoch, initial=self.batch_in_epoch // accumulation,
                       desc=f'epoch {self.epoch + 1}/{self.epochs}', dynamic_ncols=True, leave=False)
        window_loss, window_steps, window_images, window_start = 0., 0, 0, time.perf_counter()
        self._window_extras = {}
        first = self.batch_in_epoch
        try:
            for index, (inputs, targets) in enumerate(_batches(loader), start=first):
                if index >= micro_batches:
                    break
                if index == first:  # a signal that came while the loader started stops the run before this step
                    self._stop_if_requested()
                inputs = inputs.to(self.device, non_blocking=True).to(memory_format=self.memory_format)
                targets = targets.to(self.device, non_blocking=True)
                last_micro = (index + 1) % accumulation == 0
                sync = contextlib.nullcontext() if last_micro or not self.dist.enabled else self.train_model.no_sync()
                with sync:
                    with self._autocast():
                        loss = self.task.training_loss(self.train_model, inputs, targets)
                    value = loss.item()
                    self._check_finite(value)
                    self.scaler.scale(loss / accumulation if accumulation > 1 else loss).backward()
                window_loss += value / accumulation
                window_images += inputs.shape[0] * self.dist.world_size
                if not last_micro:
                    continue
                self._optimizer_step()
                self.batch_in_epoch = index + 1
                window_steps += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f'{window_loss / window_steps:.4f}', lr=f'{self._lr():.2e}',
                                    img_s=f'{window_images / (time.perf_counter() - window_start):.1f}')
                if self.global_step % cfg.log_every == 0 or self.batch_in_epoch == micro_batches:
                    elapsed = time.perf_counter() - window_start
                    extras = {key: total / window_steps for key, total in self._window_extras.items()}
                    self._log('train', lr=self._lr(), loss=window_loss / window_steps,
                              images_per_s=window_images / elapsed, elapsed_s=elapsed, **extras)
                    window_loss, window_steps, window_images, window_start = 0., 0, 0, time.perf_counter()
                    self._window_extras = {}
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self._save_checkpoint()
                if cfg.max_steps and self.global_step >= cfg.max_steps:
                    return False
                self._stop_if_requested()
        finally:
            if bar is not None:
                bar.close()
        return True

    def evaluate(self) -> Dict[str, float]:
        """Validation metrics of the model (and of its EMA, prefixed ``ema_``) at the current step."""
        loader = self._loader(self.val_set, self.val_sampler, self.config.data.val_batch_size
                              or self.config.data.batch_size)
        self.val_set.set_epoch(0)
        self.model.eval()
        metrics = self.task.evaluate(self.model, loader, self.device, self._autocast)
        if self.ema is not None:
            ema_metrics = self.task.evaluate(self.ema.module, loader, self.device, self._autocast)
            metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        return metrics

    def _validate(self) -> bool:
        """Evaluate, log and track the best main metric; returns whether this step is the new best."""
        metrics = self.evaluate()
        key = f'ema_{self.task.main_metric}' if self.ema is not None else self.task.main_metric
        value = metrics[key]
        best = self.best_metric is None or (
            value > self.best_metric if self.task.higher_is_better else value < self.best_metric)
        if best:
            self.best_metric, self.best_step = value, self.global_step
        self.last_metrics = metrics
        self._log('val', **metrics)
        if self.dist.is_main:
            shown = ', '.join(f'{k} {v:.4g}' for k, v in metrics.items() if k != 'count')
            print(f'epoch {self.epoch + 1}/{self.epochs} step {self.global_step}: {shown}', flush=True)
        return best

    def fit(self) -> RunResult:
        """Train to the end (epochs or ``max_steps``) and return what the run produced.

        SIGTERM or SIGINT stops it at the next step boundary (validation, if under way, completes first) with a
        checkpoint and raises ``Interrupted``; after the last step the run completes. A full or read-only disk raises
        ``OutputError``."""
        cfg = self.config
        if self.dist.is_main:
            print(f'run folder: {self.run_dir}', flush=True)
        with self._stop_on_signals():
            try:
                while self.epoch < self.epochs:
                    completed = self._train_epoch()
                    final = not completed or self.epoch + 1 == self.epochs
                    best = self._validate() if final or (self.epoch + 1) % cfg.eval_every == 0 else False
                    if completed:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    self._save_checkpoint(best=best)
                    if not completed or self.epoch == self.epochs:
                        break
                    self._stop_if_requested()
            except BaseException:
                if self.logger is not None:
                    with contextlib.suppress(Exception):  # the error on its way out says what went wrong
                        self.logger.close()
                raise
            curve, outputs = None, {}
            if self.dist.is_main:
                with self._writing('write logs to', self.run_dir, kept=True):
                    self.logger.close()
                    curve = plot_curves(self.logger.records, self.run_dir / 'curve.png', self.task.main_metric)
                model = self.ema.module if self.ema is not None else self.model
                model.eval()
                with self._writing('write outputs to', self.run_dir, kept=True):
                    outputs = self.task.finish(model, self.val_set, self.run_dir, self.device, self._autocast)
        return RunResult(run_dir=self.run_dir, steps=self.global_step, best_metric=self.best_metric,
                         best_step=self.best_step, metrics=self.last_metrics, curve=curve, outputs=outputs)
