#!/usr/bin/env python
"""Install the mixcl_arch BasicSR plugin.

torch/torchvision are required but deliberately not pinned: install the build you want first
(``pip install torch==2.14.1 torchvision==0.29.1`` works offline on the project machines).
"""
from setuptools import find_packages, setup


def get_version():
    namespace = {}
    with open('mixcl_arch/version.py', encoding='utf-8') as f:
        exec(f.read(), namespace)
    return namespace['__version__']


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
        'scikit-image',
        'tqdm',
    ],
    extras_require={'test': ['pytest']},
    entry_points={'console_scripts': ['mixcl-dehaze=mixcl_arch.dehaze:main']},
    classifiers=[
        'Programming Language :: Python :: 3',
        'License :: OSI Approved :: Apache Software License',
    ],
    license='Apache License 2.0',
    zip_safe=False,
)
