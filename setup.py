"""Package metadata for densezoo."""
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = {}
exec((ROOT / 'densezoo' / 'version.py').read_text(), version)

setup(
    name='densezoo',
    version=version['__version__'],
    description='Vision models on timm conventions, compared by how their blocks are connected '
                '(dense, depth-weighted, dynamic dense, residual-in-residual).',
    long_description=(ROOT / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['densezoo', 'densezoo.*']),
    package_data={'densezoo.metrics': ['niqe_pris_params.npz']},
    entry_points={'console_scripts': [
        'densezoo-train = densezoo.cli.train:main',
        'densezoo-eval-sr = densezoo.cli.eval_sr:main',
        'densezoo-flops = densezoo.cli.flops:main',
        'densezoo-latency = densezoo.cli.latency:main',
        'densezoo-model-table = densezoo.cli.model_table:main',
        'densezoo-validate = densezoo.cli.validate:main',
        'densezoo-upscale = densezoo.cli.upscale:main',
        'densezoo-export = densezoo.cli.export:main',
        'densezoo-inspect-connections = densezoo.cli.inspect_connections:main',
        'densezoo-compare = densezoo.cli.compare:main',
    ]},
    install_requires=[
        # torch and torchvision come from the package index; torchvision must match torch's build.
        # The floors are the versions CI tests (requirements/lowest.txt); the resolver's newest are tested too.
        'torch>=2.6',
        'torchvision>=0.21',
        'timm>=1.0.31,<2',
        'safetensors>=0.4',
        'pyyaml>=6.0',
        'numpy>=1.24',
        'scipy>=1.10',
        'fvcore>=0.1.5.post20221221',
        'albumentations>=1.4',
        'opencv-python-headless>=4.9.0.80',  # 16-bit colour images (albumentations' own requirement)
        'tqdm>=4.66',
        'matplotlib>=3.7',
        'tensorboard>=2.14',
    ],
    extras_require={
        'dev': [
            'pytest>=8',
            'pytest-xdist>=3.5',
        ],
        # ONNX export and its checks in ONNX Runtime (densezoo.hub.program; the test set-up installs it).
        'onnx': [
            'onnx>=1.16',
            'onnxscript>=0.2',
            'onnxruntime>=1.18',
        ],
        # The OpenMMLab stack as measured to work together with densezoo's backbones.
        'mm': [
            'mmengine==0.10.7',
            'mmcv-lite==2.1.0',
            'mmsegmentation==1.2.2',
            'mmdet==3.3.0',
            'ftfy',
            'regex',
            'setuptools<81',
        ],
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
        'Topic :: Scientific/Engineering :: Image Recognition',
    ],
)
