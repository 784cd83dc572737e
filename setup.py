#!/usr/bin/env python
"""Install the mixcl_arch BasicSR plugin.

torch/torchvision are required but deliberately not pinned: install the build you want first
(``pip install torch==2.14.1 torchvision==0.29.1`` works offline on the project machines).
"""
import os

from setuptools import Command, find_packages, setup
from setuptools.command.build import build

HOOK_PTH = 'mixcl_arch_hook.pth'


def get_version():
    namespace = {}
    with open('mixcl_arch/version.py', encoding='utf-8') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


class build_hook_pth(Command):
    """Ship ``mixcl_arch_hook.pth`` at the root of site-packages (BasicSR import hook, see ``mixcl_arch_hook.py``).

    Wheels install ``build_lib`` into site-packages. Editable wheels (setuptools >= 64) only map sources; their
    contents come from the ``install`` command's ``install_lib``, which setuptools points at the editable wheel.
    """
    description = f'copy {HOOK_PTH} to the root of the installed packages'
    user_options = []

    def initialize_options(self):
        self.build_lib = None
        self.editable_mode = False

    def finalize_options(self):
        self.set_undefined_options('build_py', ('build_lib', 'build_lib'))

    def run(self):
        target = self.get_finalized_command('install').install_lib if self.editable_mode else self.build_lib
        self.copy_file(HOOK_PTH, os.path.join(target, HOOK_PTH))

    def get_outputs(self):
        return [] if self.editable_mode else [os.path.join(self.build_lib, HOOK_PTH)]

    def get_source_files(self):
        return [HOOK_PTH]


class build_with_hook_pth(build):
    sub_commands = build.sub_commands + [('build_hook_pth', None)]


with open('README.md', encoding='utf-8') as f:
    long_description = f.read()

setup(
    name='mixcl_arch',
    version=get_version(),
    description='BasicSR plugin for CLIP-conditioned image dehazing (MixDehazeNet / MixCLDehazeNet)',
    long_description=long_description,
    long_description_content_type='text/markdown',
    keywords='computer vision, image dehazing, basicsr, clip',
    url='https://example.invalid/mixcl_arch',
    packages=find_packages(exclude=('options', 'tests', 'scripts', 'docs')),
    py_modules=['mixcl_arch_hook', 'mixcl_arch_cli'],
    cmdclass={'build': build_with_hook_pth, 'build_hook_pth': build_hook_pth},
    include_package_data=True,
    python_requires='>=3.9',
    install_requires=[
        'torch>=1.13',
        'torchvision>=0.14',
        'basicsr==1.4.2',
        'open_clip_torch>=2.20',
        'opencv-python',
        'lmdb',
        'pyyaml',
        'numpy',
        'tensorboard',
        'pytorch-msssim',
        'safetensors',
        'scikit-image',
        'tqdm',
        'matplotlib',
    ],
    extras_require={
        'test': ['pytest', 'onnx', 'onnxruntime', 'onnxscript'],
        'onnx': ['onnx', 'onnxruntime', 'onnxscript'],
        'mamba': ['mamba_ssm'],
    },
    entry_points={
        'console_scripts': [
            # light fronts: --help and argument errors are answered before torch is imported
            'mixcl-dehaze=mixcl_arch_cli:cli_dehaze',
            'mixcl-train=mixcl_arch_cli:cli_train',
            'mixcl-test=mixcl_arch_cli:cli_test',
        ]
    },
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
    ],
    license='Apache License 2.0',
    zip_safe=False,
)
