"""The OpenMMLab tests need the optional stack (``pip install -e ".[mm]"``); without it the folder is skipped.

Test modules here import mmcv / mmseg / mmdet only through the fixtures below, so they collect without the stack.
"""
import importlib.util

import pytest

MISSING = [name for name in ('mmengine', 'mmcv', 'mmseg', 'mmdet') if importlib.util.find_spec(name) is None]
SKIP_REASON = (f'OpenMMLab stack not installed (missing: {", ".join(MISSING)}); install it with '
               f'pip install -e ".[mm]"')


def pytest_collection_modifyitems(config, items):
    if not MISSING:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if 'tests/mm/' in item.nodeid.replace('\\', '/'):
            item.add_marker(skip)


@pytest.fixture(scope='session')
def mm():
    """densezoo.mm imported (mmcv._ext stand-in installed when needed), with mmseg and mmdet models registered."""
    import densezoo.mm
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    return densezoo.mm
