"""The versions setup.py admits are the versions that are tested: its floors are the pins CI installs in its second
environment (requirements/lowest.txt), the README states them, and the running torch and timm lie in the range."""
import re
from pathlib import Path

import timm
import torch

ROOT = Path(__file__).resolve().parents[1]


def _floors():
    setup = (ROOT / 'setup.py').read_text()
    return {name: version for name, version in re.findall(r"'(torch|torchvision|timm)>=([\d.]+)", setup)}


def _pins():
    lines = (ROOT / 'requirements' / 'lowest.txt').read_text().splitlines()
    return dict(line.split('==') for line in lines if line and not line.startswith('#'))


def _release(version):
    return tuple(int(part) for part in re.match(r'(\d+(?:\.\d+)*)', version).group(1).split('.'))


def test_setup_floors_are_the_pins_ci_tests():
    floors, pins = _floors(), _pins()
    assert set(floors) == set(pins) == {'torch', 'torchvision', 'timm'}
    for name, pin in pins.items():
        assert _release(pin)[:len(_release(floors[name]))] == _release(floors[name]), name


def test_readme_states_the_tested_floors():
    readme = (ROOT / 'README.md').read_text()
    pins = _pins()
    assert f"torch {pins['torch']} to" in readme and f"timm {pins['timm']}" in readme
    assert f"`torch>={_floors()['torch']}`, `timm>={_floors()['timm']}`" in readme
    assert 'pip install -r requirements/lowest.txt -e ".[dev]"' in (ROOT / '.ci' / 'run').read_text()


def test_running_versions_are_admitted():
    floors = _floors()
    assert _release(torch.__version__) >= _release(floors['torch'])
    assert _release(timm.__version__) >= _release(floors['timm'])
