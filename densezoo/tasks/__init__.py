"""Tasks of the training engine (the config's ``task`` key)."""
from densezoo.tasks.base import TASKS, Task, create_task, register_task
from densezoo.tasks.classification import ClassificationTask
from densezoo.tasks.segmentation import SegmentationTask
from densezoo.tasks.sr import SRTask
from densezoo.tasks.sr_gan import SRGANTask

__all__ = ['TASKS', 'Task', 'create_task', 'register_task', 'ClassificationTask', 'SegmentationTask', 'SRTask',
           'SRGANTask']
