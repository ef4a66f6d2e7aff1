"""Configs: YAML, overrides, and one-line errors for unknown keys and wrong types."""
import pytest

from densezoo.engine.config import ConfigError, config_from_dict, config_to_dict, load_config
from tests.engine.conftest import tiny_config, write_config


def test_load_with_overrides_and_defaults(tmp_path):
    path = write_config(tmp_path / 'exp.yaml', tiny_config(tmp_path / 'data', tmp_path / 'runs'))
    config = load_config(path, ['optim.lr=1e-4', 'data.batch_size=3', 'model.kwargs.embed_dim=16', 'amp=bf16'])
    assert config.optim.lr == 1e-4 and isinstance(config.optim.lr, float)  # YAML reads 1e-4 as a string
    assert config.data.batch_size == 3 and config.model.kwargs['embed_dim'] == 16 and config.amp == 'bf16'
    assert config.name == 'tiny' and config.data.scale == (0.8, 1.0)
    assert config.sched.min_lr == 0.0 and config.data.pipeline == 'timm'  # defaults
    assert config_from_dict(config_to_dict(config)) == config


def test_name_defaults_to_the_file_name(tmp_path):
    values = tiny_config(tmp_path / 'data', tmp_path / 'runs')
    del values['name']
    assert load_config(write_config(tmp_path / 'my_run.yaml', values)).name == 'my_run'


@pytest.mark.parametrize('override, message', [
    ('data.bach_size=3', r"^unknown config key 'data.bach_size'; did you mean 'data.batch_size'\?$"),
    ('optimizer.lr=3', r"^unknown config key 'optimizer'; did you mean 'optim'\?$"),
    ('epoch=3', r"^unknown config key 'epoch'; did you mean 'epochs'\?$"),
    ('data.batch_size=big', r"^data.batch_size='big' has the wrong type; data.batch_size must be an integer$"),
    ('optim.lr=fast', r"^optim.lr='fast' has the wrong type; optim.lr must be a number$"),
    ('model.channels_last=3', r"^model.channels_last=3 has the wrong type; model.channels_last must be true or "
                              r"false$"),
    ('data.scale=[0.5]', r'^data.scale=\[0.5\] must have 2 values$'),
    ('amp=fp8', r"^amp='fp8' is not allowed; use bf16, fp16 or null$"),
    ('data.corrupt_images=ignore', r"^data.corrupt_images='ignore' is not allowed; use 'skip' or 'error'$"),
    ('epochs=0', r'^epochs=0 is not allowed; it must be at least 1$'),
    ('ema_decay=2', r'^ema_decay=2.0 is not allowed; it must lie between 0 and 1'),
    ('lr', r"^override 'lr' is not of the form key=value"),
])
def test_bad_keys_and_values_are_one_line_errors(tmp_path, override, message):
    path = write_config(tmp_path / 'exp.yaml', tiny_config(tmp_path / 'data', tmp_path / 'runs'))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, [override])
    assert '\n' not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^config file '.*missing.yaml' does not exist$"):
        load_config(tmp_path / 'missing.yaml')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('model: [unclosed\n')
    with pytest.raises(ConfigError, match=r"^config file '.*broken.yaml' is not valid YAML: "):
        load_config(broken)
    listing = tmp_path / 'list.yaml'
    listing.write_text('- a\n- b\n')
    with pytest.raises(ConfigError, match='must hold a mapping of sections, got list'):
        load_config(listing)
    empty = tmp_path / 'empty.yaml'
    empty.write_text('')
    with pytest.raises(ConfigError, match='^model.name is missing'):
        load_config(empty)


def test_base_files_are_read_first_and_updated_section_by_section(tmp_path):
    values = tiny_config(tmp_path / 'data', tmp_path / 'runs')
    del values['name']
    (tmp_path / 'recipes').mkdir()
    write_config(tmp_path / 'recipes' / 'base.yaml', values)
    write_config(tmp_path / 'recipes' / 'lr.yaml', {'optim': {'lr': 1e-4}, 'seed': 3})
    child = tmp_path / 'recipes' / 'child.yaml'
    child.write_text('_base_: [base.yaml, lr.yaml]\n'
                     'seed: 7\n'
                     'optim: {weight_decay: 0.5}\n'
                     'model: {kwargs: {_delete_: true, embed_dim: 16}}\n')
    config = load_config(child, ['data.batch_size=2'])
    assert config.name == 'child'  # named after the file that was asked for, not its base
    assert config.seed == 7 and config.optim.lr == 1e-4 and config.optim.weight_decay == 0.5
    assert config.optim.name == 'adamw' and config.data.img_size == 16 and config.data.batch_size == 2
    assert config.model.name == values['model']['name'] and config.model.kwargs == {'embed_dim': 16}
    grandchild = tmp_path / 'grandchild.yaml'
    grandchild.write_text('_base_: recipes/child.yaml\nepochs: 1\n')
    config = load_config(grandchild)
    assert config.epochs == 1 and config.seed == 7 and config.name == 'grandchild'


def test_bad_base_files_are_one_line_errors(tmp_path):
    missing = tmp_path / 'missing_base.yaml'
    missing.write_text('_base_: nowhere.yaml\n')
    with pytest.raises(ConfigError, match=r"^_base_ file 'nowhere.yaml' of config file '.*missing_base.yaml' does "
                                          r"not exist \(it is read relative to '.*'\)$"):
        load_config(missing)
    wrong = tmp_path / 'wrong_base.yaml'
    wrong.write_text('_base_: {a: 1}\n')
    with pytest.raises(ConfigError, match=r"^_base_ in config file '.*wrong_base.yaml' must be a file name or a "
                                          r"list of file names, got \{'a': 1\}$"):
        load_config(wrong)
    (tmp_path / 'a.yaml').write_text('_base_: b.yaml\n')
    (tmp_path / 'b.yaml').write_text('_base_: a.yaml\n')
    with pytest.raises(ConfigError, match=r"^config file '.*a.yaml' includes itself through _base_: .*a.yaml -> "
                                          r".*b.yaml -> .*a.yaml$"):
        load_config(tmp_path / 'a.yaml')
