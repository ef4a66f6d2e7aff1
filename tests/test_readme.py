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
