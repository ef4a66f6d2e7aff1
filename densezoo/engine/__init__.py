"""The training engine: configs, the loop, checkpoints, logs. ``tools/train.py`` is a command line over it."""
from densezoo.engine.config import ConfigError, TrainConfig, config_from_dict, config_to_dict, load_config
from densezoo.engine.faults import Interrupted, NonFiniteLossError, OutputError, TrainingError
from densezoo.engine.trainer import RunResult, Trainer
from densezoo.engine.run import new_run_dir, resume_config, train

__all__ = ['ConfigError', 'TrainConfig', 'load_config', 'config_from_dict', 'config_to_dict', 'Trainer', 'RunResult',
           'NonFiniteLossError', 'TrainingError', 'Interrupted', 'OutputError', 'train', 'new_run_dir', 'resume_config']
