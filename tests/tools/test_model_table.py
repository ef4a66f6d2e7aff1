"""The README's model table is the registry's."""
import re
from pathlib import Path

import densezoo
from densezoo.registry import model_rows

README = Path(__file__).resolve().parents[2] / 'README.md'


def test_readme_model_table_is_generated_from_the_registry():
    text = README.read_text()
    table = re.search(r'<!-- model-table:start -->\n(.*?)\n<!-- model-table:end -->', text, re.S).group(1)
    assert table == densezoo.model_table(), 'regenerate it: python tools/model_table.py'


def test_model_rows_have_family_connection_and_counts():
    rows = {row.name: row for row in model_rows('swin*')}
    assert rows['swin_tiny_patch4_window7_224_dwa'].family == 'Swin'
    assert rows['swinv2_base_window8_256_rir'].family == 'SwinV2'
    assert rows['swin_tiny_patch4_window7_224_dwa'].connection == 'dwa'
    # timm's swin_tiny has 28,288,354 parameters; DWA adds L(L+3)/2 per stage of L blocks: 5 + 5 + 27 + 5
    assert rows['swin_tiny_patch4_window7_224_dwa'].params == 28_288_354 + 42
