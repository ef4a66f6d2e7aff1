"""The real-world SR demo: both stages of a real-world recipe, small, on the bundled photographs, then a panel of
their outputs. Stage 1 trains ``configs/demo/real_sr_psnr.yaml`` (L1), stage 2 ``configs/demo/real_sr_gan.yaml``
(L1 + GAN) from stage 1's EMA weights; ``panel.png`` shows the held-out photograph degraded by the same pipeline: the
input (nearest-neighbour), stage 1, stage 2 and the ground truth, with Y-PSNR and NIQE above each, for three draws
of the degradation.

    python tools/real_sr_demo.py --out runs/real_sr_demo --progress

A stage whose run folder holds a checkpoint resumes from it (a finished stage is kept as it is).
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image

import densezoo
from densezoo.datasets.sr import SRPairedDataset
from densezoo.engine import ConfigError, TrainingError, load_config, train
from densezoo.metrics.niqe import niqe
from densezoo.metrics.sr import psnr
from densezoo.tasks.sr import comparison_image

__all__ = ['main', 'run_demo']

DEMO_SEEDS = (0, 1, 2)


def _stage(config_path: Path, run_dir: Path, overrides, progress: bool):
    config = load_config(config_path, overrides)
    resume = (run_dir / 'checkpoints' / 'last').is_symlink()
    return train(config, run_dir=run_dir, resume=resume, progress=progress)


def run_demo(out: Path, psnr_config: Path, gan_config: Path, data: Path, progress: bool = False) -> list:
    """Train both stages into ``out/psnr`` and ``out/gan`` and write ``out/panel.png`` and ``out/scores.json``;
    returns the scores (PSNR and NIQE of each panel, per seed of the degradation)."""
    common = [f'data.root={data}']
    first = _stage(psnr_config, out / 'psnr', common, progress)
    weights = first.run_dir / 'checkpoints' / 'best' / 'ema.safetensors'
    second = _stage(gan_config, out / 'gan', common + [f'model.pretrained_file={weights}'], progress)

    config = load_config(gan_config, common)
    models = [('stage 1 (L1)', densezoo.load_sr(first.run_dir).eval()),
              ('stage 2 (GAN)', densezoo.load_sr(second.run_dir).eval())]
    scale = models[0][1].upscale
    rows, scores = [], []
    for seed in DEMO_SEEDS:  # the held-out photograph under three draws of the degradation
        val = SRPairedDataset(Path(data) / config.data.val_split / config.data.hr_dir, scale=scale,
                              degradation=config.data.degradation, degradation_options=config.data.degradation_options,
                              seed=seed)
        lr, hr = val[0]
        panels = [torch.nn.functional.interpolate(lr[None], scale_factor=scale, mode='nearest')[0]]
        with torch.no_grad():
            panels += [model(lr[None])[0].clamp(0, 1) for _, model in models]
        panels.append(hr)
        row = {}
        for label, image in zip(['input'] + [name for name, _ in models] + ['HR'], panels):
            row[label] = dict(psnr=float(psnr(image, hr, crop_border=scale)),
                              niqe=float(niqe(image, crop_border=scale)))
        labels = [f'{label} {v["psnr"]:.2f} dB NIQE {v["niqe"]:.2f}' if label != 'HR' else
                  f'HR NIQE {v["niqe"]:.2f}' for label, v in row.items()]
        labels[0] = f'input (seed {seed}) ' + labels[0][len('input '):]
        rows.append(comparison_image(panels, labels, crop=max(hr.shape[-2:])))
        scores.append(dict(seed=seed, **row))
    panel = Image.new('RGB', (rows[0].width, sum(r.height for r in rows) + 4 * (len(rows) - 1)), 'white')
    for i, row in enumerate(rows):
        panel.paste(row, (0, i * (row.height + 4)))
    panel.save(out / 'panel.png')
    (out / 'scores.json').write_text(json.dumps(scores, indent=1) + '\n')
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, default=Path('runs/real_sr_demo'), help='folder of both runs and the panel')
    parser.add_argument('--psnr-config', type=Path, default=Path('configs/demo/real_sr_psnr.yaml'))
    parser.add_argument('--gan-config', type=Path, default=Path('configs/demo/real_sr_gan.yaml'))
    parser.add_argument('--data', type=Path, default=Path('data/sr_demo'), help='the bundled photographs')
    parser.add_argument('--progress', action='store_true', help='show progress bars')
    args = parser.parse_args(argv)
    for path in (args.psnr_config, args.gan_config):
        if not path.is_file():
            print(f'error: config {path} does not exist; run from a clone of densezoo or give --psnr-config and '
                  f'--gan-config', file=sys.stderr)
            return 2
    try:
        scores = run_demo(args.out, args.psnr_config, args.gan_config, args.data, args.progress)
    except (ConfigError, TrainingError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    for row in scores:
        print(f'seed {row["seed"]}: ' + '; '.join(f'{label} PSNR {v["psnr"]:.2f} NIQE {v["niqe"]:.2f}'
                                                  for label, v in row.items() if label != 'seed'))
    print(f'panel: {args.out / "panel.png"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
