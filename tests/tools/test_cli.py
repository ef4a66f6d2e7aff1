"""The tools are installed commands (``densezoo-train``, ...), modules (``python -m densezoo.cli.train``) and
``tools/*.py`` scripts, all three the same ``main``."""
import importlib
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import densezoo

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ('train', 'upscale', 'export', 'validate', 'eval_sr', 'flops', 'latency', 'model_table', 'inspect_connections',
         'compare')


def test_console_scripts_are_the_tools_mains():
    scripts = {entry.name: entry for entry in entry_points(group='console_scripts')
               if entry.value.startswith('densezoo.cli.')}
    assert sorted(scripts) == sorted(f"densezoo-{tool.replace('_', '-')}" for tool in TOOLS)
    for tool in TOOLS:
        main = importlib.import_module(f'densezoo.cli.{tool}').main
        assert scripts[f"densezoo-{tool.replace('_', '-')}"].load() is main


@pytest.mark.parametrize('command', [['-m', 'densezoo.cli.model_table'], [str(ROOT / 'tools' / 'model_table.py')]])
def test_module_and_script_give_the_same_output(command):
    result = subprocess.run([sys.executable, *command, '*_mudd'], capture_output=True, text=True, check=True,
                            cwd=ROOT.parent)  # outside the clone: nothing found through the working directory
    assert result.stdout.strip() == densezoo.model_table('*_mudd').strip()


def test_no_tool_edits_the_import_path():
    for path in [*(ROOT / 'tools').glob('*.py'), *(ROOT / 'densezoo' / 'cli').glob('*.py')]:
        assert 'sys.path' not in path.read_text(encoding='utf-8'), path.name
