"""The package stack points one way: layers <- models <- heads <- tasks <- engine <- cli (the tools), with profile
and mm on the side and the shared config sections (``densezoo.config``) under tasks and engine; ``import densezoo``
loads the models without the training stack; module docstrings stay short."""
import ast
import subprocess
import sys
from pathlib import Path

import densezoo

ROOT = Path(densezoo.__file__).parent

#: sub-package (or top-level module) -> the densezoo sub-packages it may import
ALLOWED = {
    'version': set(),
    'distributed': {'config'},
    'config': set(),
    'checkpoint_io': set(),
    'layers': set(),
    'imresize': set(),
    'metrics': {'checkpoint_io', 'imresize'},
    'datasets': {'imresize'},
    'losses': {'checkpoint_io'},
    'models': {'layers'},
    'registry': {'models'},
    'heads': {'checkpoint_io', 'layers', 'models'},
    'hub': {'checkpoint_io', 'layers', 'models', 'heads', 'registry'},
    '__init__': {'layers', 'models', 'heads', 'hub', 'registry', 'version'},
    'profile': {'__init__', 'layers', 'models', 'registry'},
    'mm': {'__init__', 'checkpoint_io', 'layers', 'models', 'heads', 'registry'},
    'tasks': {'checkpoint_io', 'config', 'datasets', 'distributed', 'heads', 'hub', 'layers', 'losses', 'metrics',
              'models', 'profile', 'registry'},
    'engine': {'checkpoint_io', 'config', 'datasets', 'distributed', 'layers', 'metrics', 'models', 'registry',
               'tasks'},
    'cli': {'__init__', 'config', 'datasets', 'engine', 'hub', 'metrics', 'profile', 'registry', 'tasks'},
}


#: imports that reach up on purpose: ``densezoo.upscale`` is a facade that loads the upscaler (tasks) when called;
#: ``test_importing_densezoo_loads_no_training_stack`` checks that ``import densezoo`` does not
LAZY_FACADES = {('densezoo', 'densezoo.tasks.upscale')}


def _part(module: str) -> str:
    parts = module.split('.')
    return '__init__' if len(parts) == 1 else parts[1]


def _imports(path: Path):
    """Every densezoo module ``path`` imports, at any depth of the file (function-level imports included)."""
    for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        else:
            continue
        yield from (name for name in names if name == 'densezoo' or name.startswith('densezoo.'))


def test_imports_only_point_down():
    wrong = []
    for path in sorted(ROOT.rglob('*.py')):
        relative = path.relative_to(ROOT.parent).with_suffix('')
        module = '.'.join(relative.parts[:-1] if relative.name == '__init__' else relative.parts)
        part = _part(module)
        assert part in ALLOWED, f'{module} belongs to no level of the stack; add {part!r} to ALLOWED'
        for imported in _imports(path):
            target = _part(imported)
            if target != part and target not in ALLOWED[part] and (module, imported) not in LAZY_FACADES:
                wrong.append(f'{module} imports {imported}')
    assert wrong == []


def test_importing_densezoo_loads_no_training_stack():
    code = ('import sys, densezoo, timm; timm.create_model("swinir_light_x2"); '
            'print("\\n".join(sorted(sys.modules)))')
    loaded = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout.split()
    training = [name for name in loaded
                if name.startswith(('densezoo.engine', 'densezoo.tasks', 'densezoo.datasets', 'densezoo.metrics',
                                    'timm.optim', 'timm.scheduler', 'mmengine', 'mmseg', 'mmdet'))]
    assert training == []
    assert 'densezoo.models.swinir' in loaded


def test_module_docstrings_are_short():
    """About ten lines, as timm's; the design notes live in docs/."""
    long = []
    for path in sorted(ROOT.rglob('*.py')):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding='utf-8')), clean=False) or ''
        if len(doc.strip().splitlines()) > 10:
            long.append(str(path.relative_to(ROOT.parent)))
    assert long == []
