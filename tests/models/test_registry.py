"""densezoo's names in timm's registry: no shadowing, importable, listed."""
import json
import subprocess
import sys

import pytest
import timm

import densezoo
from densezoo.models import MODEL_MODULES, SR_MODEL_MODULES


def _timm_alone():
    """timm's own model and module names, from a process that never imported densezoo."""
    code = 'import json, timm; print(json.dumps([timm.list_models(), timm.list_modules()]))'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_no_densezoo_name_or_module_shadows_timm():
    timm_models, timm_modules = _timm_alone()
    ours = densezoo.list_models()
    assert ours and not set(ours) & set(timm_models)
    assert not set(MODEL_MODULES + SR_MODEL_MODULES) & set(timm_modules)
    for name in ours:
        assert timm.models.is_model(name)
        assert timm.models.get_pretrained_cfg(name) is not None


def test_list_models_filters():
    assert densezoo.list_models('*_mudd') == sorted(n for n in densezoo.list_models() if n.endswith('_mudd'))
    assert set(densezoo.list_models()) <= set(timm.list_models())
    classification, sr = densezoo.list_models(task='classification'), densezoo.list_models(task='sr')
    assert sorted(classification + sr) == densezoo.list_models() and not set(classification) & set(sr)
    assert 'swinir_light_x2' in sr and 'swin_tiny_patch4_window7_224_dwa' in classification
    with pytest.raises(ValueError, match="task='detection' is not known"):
        densezoo.list_models(task='detection')


def test_entrypoints_are_importable():
    from densezoo.models.swin import swin_tiny_patch4_window7_224_dwa
    assert swin_tiny_patch4_window7_224_dwa.__name__ == 'swin_tiny_patch4_window7_224_dwa'
    assert 'dwa' in swin_tiny_patch4_window7_224_dwa.__doc__
