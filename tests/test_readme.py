"""The README's commands and examples are the ones that work."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / 'README.md').read_text()


def test_quick_start_runs():
    code = re.search(r'## Quick start\n\n```python\n(.*?)```', README, re.S).group(1)
    exec(compile(code, 'README.md quick start', 'exec'), {})


def test_super_resolution_example_runs():
    code = re.search(r'## Super-resolution\n\n```python\n(.*?)```', README, re.S).group(1)
    namespace = {}
    exec(compile(code, 'README.md super-resolution', 'exec'), namespace)
    assert namespace['sr'].shape == (1, 3, 246, 154)


def test_segmentation_example_runs():
    code = re.search(r'## Semantic segmentation\n\n```python\n(.*?)```', README, re.S).group(1)
    namespace = {}
    exec(compile(code, 'README.md segmentation', 'exec'), namespace)
    assert namespace['logits'].shape == (1, 150, 83, 61)


def test_ci_runs_the_readme_setup_and_test_commands():
    ci = (ROOT / '.ci' / 'run').read_text()
    setup = re.search(r'## Set-up\n\n```bash\n(.*?)```', README, re.S).group(1)
    tests = re.search(r'## Tests\n\n```bash\n(.*?)```', README, re.S).group(1).strip()
    dev_install = [line.split('#')[0].strip() for line in setup.splitlines() if '[dev' in line][0]
    assert dev_install in ci.splitlines()
    assert tests in ci.splitlines()


def test_main_command_is_the_offline_demo():
    """The demo itself is trained (shortened) in tests/engine/test_configs.py."""
    command = re.search(r'## Main command\n\n.*?```bash\n(.*?)```', README, re.S).group(1).strip()
    assert command == 'python tools/train.py configs/demo/swin_digits.yaml'
    assert (ROOT / 'configs' / 'demo' / 'swin_digits.yaml').is_file()
    assert len(list((ROOT / 'data' / 'digits').rglob('*.png'))) == 1797
    assert 'python tools/train.py configs/demo/swinir_light_x2_sr.yaml' in README
    assert (ROOT / 'configs' / 'demo' / 'swinir_light_x2_sr.yaml').is_file()


def test_upscale_example_runs(tmp_path, monkeypatch, capsys):
    """The Python example of "Upscale your images", on a release-layout SwinIR-M x4 file (random weights) and the
    images it names."""
    import numpy as np
    import timm
    import torch
    from PIL import Image

    from densezoo.hub.export import export_official
    code = re.search(r'## Upscale your images\n.*?```python\n(.*?)```', README, re.S).group(1)
    torch.manual_seed(0)
    export_official(timm.create_model('swinir_classical_x4'), tmp_path / '001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth')
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(tmp_path / 'photo.jpg')
    (tmp_path / 'scans').mkdir()
    Image.fromarray(rng.integers(0, 256, (9, 8), dtype=np.uint8)).save(tmp_path / 'scans' / 'page.png')
    monkeypatch.chdir(tmp_path)
    exec(compile(code, 'README.md upscale', 'exec'), {})
    printed = capsys.readouterr().out.strip()
    assert printed == ('SwinIR x4, 3 channels, width 180, depth 6x6, window 8, upsampler pixelshuffle (official '
                       'layout); built as swinir_classical_x4')
    assert printed in ' '.join(README.split())  # the line the README quotes
    assert Image.open(tmp_path / 'upscaled' / 'photo.png').size == (48, 40)
    assert Image.open(tmp_path / 'upscaled' / 'page.png').mode == 'L'


def test_upscale_and_export_commands_parse():
    from densezoo.cli import export, upscale
    for section, tool in (('Upscale your images', upscale), ('Export', export)):
        block = re.search(rf'## {section}\n.*?```bash\n(.*?)```', README, re.S).group(1)
        for line in block.strip().splitlines():
            argv = line.split('#')[0].split()
            assert argv[:2] == ['python', f'tools/{tool.__name__.rsplit(".", 1)[1]}.py']
            tool.parse_args(argv[2:])
