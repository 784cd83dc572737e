"""Training patches for DehazeNet, synthesised on the fly from clean images (Cai et al., TIP 2016, Sec. IV-A)."""
import os
import os.path as osp

import numpy as np
import torch
from basicsr.data.transforms import augment
from basicsr.utils import FileClient, img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data as data

from mixcl_arch.data.lmdb_tools import lmdb_env, read_meta_info
from mixcl_arch.utils.image_io import IMG_EXTENSIONS, decode_image, image_key, image_size, scan_images, tail_ok


def _lmdb_keys(folder):
    meta = osp.join(folder, 'meta_info.txt')
    if not osp.isfile(meta):
        raise FileNotFoundError(f'TransmissionPatchDataset: {meta} not found; {folder} is not a BasicSR LMDB '
                                '(make one with scripts/create_lmdb.py).')
    lmdb_env(folder)  # a zero-byte or truncated data.mdb fails here, not with SIGBUS at the first read
    with open(meta, encoding='utf-8') as f:
        # BasicSR's own writer lists 'key.png' while the stored key has no extension
        return [image_key(line.split(' ')[0]) for line in f if line.strip()]


@DATASET_REGISTRY.register()
class TransmissionPatchDataset(data.Dataset):
    """Hazy patches with a known transmission, made from a folder of clean images (DehazeNet's training data).

    For each sample: a random ``patch_size`` crop J of a clean image (optionally flipped / rotated), a transmission
    t ~ U(t_range) constant over the patch, an atmospheric light A (1 in the paper; a range samples a grey A), and
    the hazy patch I = J * t + A * (1 - t). Each image gives ``patches_per_image`` samples per epoch.

    Options (``opt``):
        dataroot_gt (str): Folder of clean images (searched recursively), or a BasicSR LMDB (``*.lmdb``) with
            ``io_backend: {type: lmdb}``.
        io_backend (dict): ``{type: disk}`` (default) or ``{type: lmdb}``.
        meta_info_file (str, optional): Text file whose lines start with image paths relative to ``dataroot_gt``
            (LMDB keys for LMDB); only those images are used.
        patch_size (int): Patch side (16, as the paper).
        patches_per_image (int): Samples per image per epoch (default 100); the dataset length is
            ``num_images * patches_per_image``.
        t_range (list[float]): Bounds of the uniform transmission, 0 < low < high <= 1 (default [0.01, 1.0]:
            the paper's U(0, 1) without t = 0, where the patch carries no information).
        A (float | list[float]): Atmospheric light, a constant (default 1.0, the paper) or [low, high] bounds
            of a uniform grey A, within (0, 1].
        use_hflip (bool), use_rot (bool): BasicSR augmentation of the clean patch (default true, false).
        cache_images (bool): Keep decoded images in memory (per data-loader worker); worthwhile for small folders
            since every sample reads a whole image (default false).

    Returns (per sample):
        dict: 'lq' (3, P, P) float32 hazy patch in [0, 1]; 'gt' (1, P, P) float32 transmission map (t everywhere);
        'clear' (3, P, P) float32 clean patch; 't' (1,) float32; 'A' (1,) float32; 'lq_path' and 'gt_path'
        (the clean image's path or LMDB key).

    Raises:
        FileNotFoundError / ValueError at construction: missing or empty folder, an unreadable first image,
        bad option values.
    """

    def __init__(self, opt):
        super().__init__()
        self.opt = opt
        self.io_backend_opt = dict(opt.get('io_backend') or {'type': 'disk'})
        self.file_client = None
        self.gt_folder = opt.get('dataroot_gt')
        if not self.gt_folder:
            raise ValueError('TransmissionPatchDataset needs `dataroot_gt`, a folder of clean images.')
        if not osp.isdir(self.gt_folder):
            raise FileNotFoundError(f'TransmissionPatchDataset: dataroot_gt {self.gt_folder} is not a folder.')
        if not os.access(self.gt_folder, os.R_OK | os.X_OK):
            raise PermissionError(f'TransmissionPatchDataset: dataroot_gt {self.gt_folder} is not readable.')
        self.patch_size = int(opt.get('patch_size', 16))
        self.patches_per_image = int(opt.get('patches_per_image', 100))
        self.t_range = [float(v) for v in opt.get('t_range', [0.01, 1.0])]
        a_opt = opt.get('A', 1.0)
        self.a_range = [float(v) for v in a_opt] if isinstance(a_opt, (list, tuple)) else [float(a_opt)] * 2
        self._check_options()

        backend = self.io_backend_opt.get('type', 'disk')
        if backend == 'lmdb':
            names = _lmdb_keys(self.gt_folder)
        elif backend == 'disk':
            names = scan_images(self.gt_folder, allow_empty=True)
        else:
            raise ValueError(f"TransmissionPatchDataset: io_backend type must be 'disk' or 'lmdb', got {backend!r}.")
        meta = opt.get('meta_info_file')
        if meta:
            if not osp.isfile(meta):
                raise FileNotFoundError(f'TransmissionPatchDataset: meta_info_file {meta} not found.')
            with open(meta, encoding='utf-8') as f:
                wanted = [line.split()[0] for line in f if line.strip()]
            missing = sorted(set(wanted) - set(names))
            if missing:
                raise FileNotFoundError(f'TransmissionPatchDataset: {len(missing)} image(s) of {meta} not in '
                                        f'{self.gt_folder}, e.g. {missing[:3]}.')
            names = wanted
        if not names:
            raise ValueError(f'TransmissionPatchDataset: no images ({", ".join(IMG_EXTENSIONS)}) in '
                             f'{self.gt_folder}.')
        self.paths = names if backend == 'lmdb' else [osp.join(self.gt_folder, n) for n in names]
        self.cache = {} if opt.get('cache_images', False) else None
        self._check_all_images(backend)  # fail now, not at iteration 40,000
        self._load(0)
        if self.cache is not None:
            self.cache.clear()  # workers fork with an empty cache
        self.file_client = None

    def _check_all_images(self, backend):
        """Every image readable (header, PNG/JPEG end marker) and at least ``patch_size`` on both sides."""
        bad, small = [], []
        if backend == 'lmdb':
            shapes = {image_key(k): shape for k, shape, _ in read_meta_info(self.gt_folder)}
            sizes = [(p, shapes.get(p, (None, None))[:2]) for p in self.paths]
        else:
            sizes = [(p, image_size(p) if tail_ok(p) else None) for p in self.paths]
        for path, hw in sizes:
            if hw is None or hw[0] is None:
                bad.append(path)
            elif min(hw) < self.patch_size:
                small.append(f'{path} ({hw[1]}x{hw[0]})')
        if bad:
            raise IOError(f'TransmissionPatchDataset: {len(bad)} unreadable or truncated image(s): {bad[:5]}')
        if small:
            raise ValueError(f'TransmissionPatchDataset: {len(small)} image(s) smaller than patch_size '
                             f'{self.patch_size}: {small[:5]}')

    def _check_options(self):
        lo, hi = self.t_range if len(self.t_range) == 2 else (None, None)
        if lo is None or not 0.0 < lo < hi <= 1.0:
            raise ValueError(f'TransmissionPatchDataset: t_range must be [low, high] with 0 < low < high <= 1, got '
                             f'{self.t_range}.')
        a_lo, a_hi = self.a_range if len(self.a_range) == 2 else (None, None)
        if a_lo is None or not 0.0 < a_lo <= a_hi <= 1.0:
            raise ValueError(f'TransmissionPatchDataset: A must be in (0, 1] (a value or [low, high]), got '
                             f'{self.opt.get("A")}.')
        if self.patch_size < 1 or self.patches_per_image < 1:
            raise ValueError(f'TransmissionPatchDataset: patch_size and patches_per_image must be >= 1, got '
                             f'{self.patch_size} and {self.patches_per_image}.')

    def _load(self, idx):
        """The idx-th clean image as float32 RGB (H, W, 3) in [0, 1] (cached when ``cache_images``).

        Decoded by the project's decoder (:func:`~mixcl_arch.utils.image_io.decode_image`, EXIF orientation applied):
        an image whose header declares more than ``MIXCL_MAX_PIXELS`` (200 MP) pixels is refused before OpenCV
        allocates.
        """
        if self.cache is not None and idx in self.cache:
            return self.cache[idx]
        path = self.paths[idx]
        try:
            img = decode_image(self._read_bytes(path), path)
        except Exception as err:
            raise IOError(f'TransmissionPatchDataset: cannot read image {path}: {err}') from err
        if min(img.shape[:2]) < self.patch_size:
            raise ValueError(f'TransmissionPatchDataset: image {path} ({img.shape[1]}x{img.shape[0]}) is smaller '
                             f'than patch_size {self.patch_size}.')
        if self.cache is not None:
            self.cache[idx] = img
        return img

    def _read_bytes(self, path):
        """Encoded bytes of an image path (disk) or key (LMDB, through the shared checked environment)."""
        if self.io_backend_opt.get('type', 'disk') == 'lmdb':
            with lmdb_env(self.gt_folder).begin(write=False) as txn:
                buf = txn.get(path.encode('ascii'))
            if buf is None:
                raise KeyError(f'key {path!r} not in {self.gt_folder}')
            return buf
        if self.file_client is None:  # created lazily, once per data-loader worker
            self.file_client = FileClient('disk')
        return self.file_client.get(path, 'gt')

    def __getitem__(self, index):
        img_idx = index // self.patches_per_image
        img = self._load(img_idx)
        h, w = img.shape[:2]
        p = self.patch_size
        top = np.random.randint(0, h - p + 1)
        left = np.random.randint(0, w - p + 1)
        clear = augment(img[top:top + p, left:left + p].copy(), self.opt.get('use_hflip', True),
                        self.opt.get('use_rot', False))
        t = np.float32(np.random.uniform(*self.t_range))
        a = np.float32(np.random.uniform(*self.a_range)) if self.a_range[0] < self.a_range[1] \
            else np.float32(self.a_range[0])
        hazy = clear * t + a * (1.0 - t)
        lq, clear_t = img2tensor([hazy, clear], bgr2rgb=False, float32=True)
        path = self.paths[img_idx]
        return {
            'lq': lq.clamp_(0, 1),
            'gt': torch.full((1, p, p), float(t), dtype=torch.float32),
            'clear': clear_t,
            't': torch.tensor([t], dtype=torch.float32),
            'A': torch.tensor([a], dtype=torch.float32),
            'lq_path': path,
            'gt_path': path,
        }

    def __len__(self):
        return len(self.paths) * self.patches_per_image
