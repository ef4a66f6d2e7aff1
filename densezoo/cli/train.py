"""Train a model from a YAML config (task, model, data, optimizer, schedule): densezoo's training engine.

    python tools/train.py configs/demo/swin_digits.yaml
    python tools/train.py configs/demo/swin_digits.yaml --opt optim.lr=5e-4 data.batch_size=32
    python tools/train.py configs/demo/swinir_light_x2_sr.yaml                # super-resolution (task: sr)
    python tools/train.py --resume runs/swin_digits-20260101-120000          # continue a run where it stopped
    torchrun --nproc_per_node 2 tools/train.py configs/demo/swin_digits.yaml  # several processes (DDP)

SIGTERM (sent by SLURM or torchrun before preemption) or Ctrl-C stops training at the next step, with a checkpoint:
exit status 75 (EX_TEMPFAIL, "try again": continue exactly with --resume). The help lists every exit status.
"""
import argparse
import logging
import os
import sys
import warnings

from densezoo.datasets import DataError
from densezoo.engine import ConfigError, Interrupted, TrainingError, load_config, resume_config, train
from densezoo.engine.config import apply_overrides, config_from_dict, config_to_dict


EXIT_STATUS = """exit status:
  0    the run completed
  1    training error, a full or read-only disk among them (the last good checkpoint is kept)
  2    bad config or data
  75   EX_TEMPFAIL, "try again": stopped by SIGTERM or Ctrl-C while training, after writing a checkpoint; continue
       with --resume RUN_DIR (stopped by SIGTERM before training started: run the command again)
  130  Ctrl-C before training started
"""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, epilog=EXIT_STATUS,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', nargs='?', help='YAML config (not needed with --resume)')
    parser.add_argument('--opt', nargs='*', default=[], metavar='KEY=VALUE',
                        help='override config values, e.g. optim.lr=3e-4 data.workers=0')
    parser.add_argument('--resume', metavar='RUN_DIR', default=None,
                        help='continue the run in RUN_DIR from its last checkpoint')
    return parser.parse_args(argv)


def one_line(err: Exception) -> str:
    """The reason of ``err`` on one line (an error raised in a loader worker arrives with that worker's traceback)."""
    text = str(err)
    if 'Original Traceback' in text:
        last = text.strip().splitlines()[-1]
        return last.split(': ', 1)[1] if ': ' in last else last
    return ' '.join(text.split('\n'))


EX_TEMPFAIL = 75  # sysexits.h: a temporary failure, try again (here: continue with --resume)
EX_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    warnings.filterwarnings('ignore', category=FutureWarning)
    is_main = int(os.environ.get('RANK', '0')) == 0
    try:
        if args.resume:
            config = resume_config(args.resume)
            if args.opt:
                config = config_from_dict(apply_overrides(config_to_dict(config), args.opt))
        elif args.config:
            config = load_config(args.config, args.opt)
        else:
            raise ConfigError('give a config file, or --resume RUN_DIR to continue a run')
        result = train(config, run_dir=args.resume, resume=bool(args.resume))
    except Interrupted:  # its line is printed: the checkpoint (if any), and how to continue
        return EX_TEMPFAIL
    except (ConfigError, DataError, TrainingError, ValueError) as err:
        print(f'error: {one_line(err)}', file=sys.stderr)
        return 1 if isinstance(err, TrainingError) else 2
    except KeyboardInterrupt:
        if is_main:
            print('interrupted by Ctrl-C before training started; no checkpoint written; run the command again',
                  file=sys.stderr)
        return EX_INTERRUPTED
    if is_main:
        best = result.run_dir / 'checkpoints' / 'best' / 'model.safetensors'
        if result.best_metric is not None:
            print(f'best validation {result.best_metric:.2f} at step {result.best_step}')
        print(f'run folder: {result.run_dir}')
        print(f'training curve: {result.curve}')
        print(f'weights: {best}')
        outputs = result.outputs
        if 'comparison' in outputs:  # super-resolution: a crop of the first validation image
            print(f"comparison: {outputs['comparison']} ({outputs['baseline_name']} {outputs['baseline_psnr']:.2f} dB, "
                  f"model {outputs['model_psnr']:.2f} dB on {outputs['comparison_image']})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
