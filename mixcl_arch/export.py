"""Export registered networks to ONNX and ``torch.export`` (.pt2), and run exported ONNX models with ONNX Runtime.

The exported graph takes and returns images in [0, 1] whatever the net's ``data_range`` (the conversion is part of
the graph), with dynamic batch, height and width (any size, odd and below 40 px included: the archs compute their
padding with traceable ops, see :mod:`mixcl_arch.archs.arch_util`). Inputs and outputs:

- ``image``: (B, 3, H, W) float32 RGB in [0, 1];
- ``cond`` (MixCLDehazeNet only): (B, K, E) float32 conditioning vectors (K = ``num_cond``, E = 512 for ViT-B/32),
  the same tensor ``MixCLDehazeNet.forward`` takes as ``text``;
- output ``dehazed`` (B, 3, H, W) (clip it to [0, 1]), or ``transmission`` (B, 1, H, W) for DehazeNet.

Both files carry the net's description (:func:`export_metadata`): ONNX in ``metadata_props``, .pt2 in the extra file
``mixcl_arch.json``. :class:`OnnxRuntimeRunner` reads it back and runs the model like a restorer (tiles included).
ONNX needs ``pip install onnx onnxruntime onnxscript`` (the ``onnx`` extra); nothing here imports them before use.
"""
import dataclasses
import hashlib
import importlib.util
import io
import json
import math
import os

import torch
from torch import nn

from mixcl_arch.utils.file_io import atomic_write_bytes
from mixcl_arch.utils.tiling import net_tile_align, tiled_forward
from mixcl_arch.version import __version__

BACKENDS = ('torch', 'onnxruntime')
IMAGE_INPUT = 'image'
METADATA_KEY = 'mixcl_arch'  # ONNX metadata_props key / .pt2 extra file stem holding export_metadata() as JSON
PT2_EXTRA_FILE = METADATA_KEY + '.json'
CACHE_ENV = 'MIXCL_ONNX_CACHE'  # folder of cached_onnx(); default ~/.cache/mixcl_arch/onnx
# example size for tracing: batch 2 and H != W, so that no size is 0/1-specialised or unified with another
EXAMPLE_BATCH, EXAMPLE_HEIGHT, EXAMPLE_WIDTH = 2, 48, 64


def _cond_input(net, batch):
    """MixCLDehazeNet's conditioning: ``cond`` (B, K, E), unit-norm like CLIP features."""
    return {'cond': nn.functional.normalize(torch.randn(batch, net.num_cond, net.cond_dim), dim=-1)}


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    """How a registered arch is called, for export.

    Attributes:
        output (str): Name of the graph output ('dehazed' for images in [0, 1], or what the net predicts).
        extra_inputs (callable | None): ``fn(net, batch) -> {name: example tensor}`` of the inputs after ``image``,
            passed positionally in this order; their dim 0 is the batch, other dims are fixed by the net.
    """
    output: str
    extra_inputs: object = None

    def example_inputs(self, net, batch=EXAMPLE_BATCH, height=EXAMPLE_HEIGHT, width=EXAMPLE_WIDTH):
        """Example inputs as an ordered {name: tensor} dict (``image`` first)."""
        inputs = {IMAGE_INPUT: torch.rand(batch, 3, height, width)}
        inputs.update(self.extra_inputs(net, batch) if self.extra_inputs else {})
        return inputs


# one entry per exportable arch (ARCH_REGISTRY name); a new arch exports once it has an entry here
EXPORT_SPECS = {
    'MixDehazeNet': ExportSpec('dehazed'),
    'MixCLDehazeNet': ExportSpec('dehazed', _cond_input),
    'AODNet': ExportSpec('dehazed'),
    'DehazeNet': ExportSpec('transmission'),
}


def export_spec(net):
    """The :class:`ExportSpec` of ``net``'s class.

    Raises:
        ValueError: For an arch without an entry in ``EXPORT_SPECS``.
    """
    name = type(net).__name__
    if name not in EXPORT_SPECS:
        raise ValueError(f'No export spec for {name}; exportable archs: {sorted(EXPORT_SPECS)} '
                         '(add an entry to mixcl_arch.export.EXPORT_SPECS).')
    return EXPORT_SPECS[name]


class UnitRangeGraph(nn.Module):
    """What gets exported: ``net`` with [0, 1] image input/output whatever its ``data_range``.

    Args:
        net (nn.Module): A registered arch in eval mode.
    """

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.signed = getattr(net, 'data_range', 'unit') == 'signed' and export_spec(net).output == 'dehazed'

    def forward(self, image, *extra):
        """image (B, 3, H, W) in [0, 1], extra inputs as the spec lists them -> the net's output (unit range)."""
        out = self.net(image * 2 - 1 if self.signed else image, *extra)
        return (out + 1) * 0.5 if self.signed else out


def export_metadata(net, net_opt=None):
    """Description of an exported net, stored in the exported files and read by :class:`OnnxRuntimeRunner`.

    Returns:
        dict: ``arch``, ``inputs`` (names in order), ``output``, ``num_cond``, ``cond_dim``, ``tile_align``,
        ``num_params``, ``network_g`` (options used to build it), ``mixcl_arch_version``, ``torch_version``.
    """
    spec = export_spec(net)
    return {
        'arch': type(net).__name__,
        'inputs': list(spec.example_inputs(net, 1, 1, 1)),
        'output': spec.output,
        'num_cond': int(getattr(net, 'num_cond', 0) or 0),
        'cond_dim': int(getattr(net, 'cond_dim', 0) or 0),
        'tile_align': net_tile_align(net),
        'num_params': sum(p.numel() for p in net.parameters()),
        'network_g': dict(net_opt or {}),
        'mixcl_arch_version': __version__,
        'torch_version': torch.__version__,
    }


def export_program(net):
    """``torch.export`` of ``net`` (wrapped by :class:`UnitRangeGraph`) with dynamic batch, height and width.

    Args:
        net (nn.Module): A registered arch; it is put in eval mode.

    Returns:
        torch.export.ExportedProgram: Inputs ``image`` and the spec's extra inputs, positionally.
    """
    net.eval()
    inputs = export_spec(net).example_inputs(net)
    batch = torch.export.Dim('batch', min=1)
    dynamic = ({0: batch, 2: torch.export.Dim('height', min=1), 3: torch.export.Dim('width', min=1)}, )
    if len(inputs) > 1:  # forward(image, *extra) sees the extra inputs as one tuple
        dynamic += (({0: batch}, ) * (len(inputs) - 1), )
    with torch.no_grad():
        return torch.export.export(UnitRangeGraph(net), tuple(inputs.values()), dynamic_shapes=dynamic)


def save_pt2(program, path, metadata):
    """Write a ``torch.export`` program (with ``metadata`` as the extra file ``mixcl_arch.json``) atomically."""
    buf = io.BytesIO()
    torch.export.save(program, buf, extra_files={PT2_EXTRA_FILE: json.dumps(metadata)})
    atomic_write_bytes(buf.getvalue(), path)


def load_pt2(path):
    """Load a .pt2 written by :func:`save_pt2`.

    Returns:
        tuple[torch.export.ExportedProgram, dict]: The program (call ``program.module()(image, *extra)``) and its
        metadata.
    """
    extra = {PT2_EXTRA_FILE: ''}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    if not extra[PT2_EXTRA_FILE]:
        raise ValueError(f'{path}: no {PT2_EXTRA_FILE} inside; not written by mixcl_arch.export.')
    return program, json.loads(extra[PT2_EXTRA_FILE])


def save_onnx(program, path, metadata, opset=None):
    """Convert a program from :func:`export_program` to ONNX (dynamic axes kept) and write it atomically.

    Args:
        program (torch.export.ExportedProgram): The exported net.
        path (str): Destination ``.onnx`` file.
        metadata (dict): :func:`export_metadata`; stored as the ``mixcl_arch`` entry of ``metadata_props``.
        opset (int | None): ONNX opset; None lets torch choose.
    """
    onnx_program = torch.onnx.export(program, (), input_names=metadata['inputs'], output_names=[metadata['output']],
                                     opset_version=opset, dynamo=True, verbose=False)
    proto = onnx_program.model_proto
    _name_dynamic_dims(proto.graph)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    atomic_write_bytes(proto.SerializeToString(), path)


def _name_dynamic_dims(graph):
    """Rename the exporter's size symbols (s0, s1, ...) of the graph inputs/outputs to batch / height / width."""
    image_dims = graph.input[0].type.tensor_type.shape.dim
    names = {image_dims[i].dim_param: name for i, name in ((0, 'batch'), (2, 'height'), (3, 'width'))}
    for value in list(graph.input) + list(graph.output):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def read_onnx_metadata(path):
    """The ``mixcl_arch`` metadata of an ONNX file written by :func:`save_onnx`.

    Raises:
        FileNotFoundError: Missing file. ValueError: No such metadata.
    """
    import onnx
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'ONNX model not found: {path}')
    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f'{path}: no {METADATA_KEY!r} entry in metadata_props; export it with scripts/export.py.')
    return json.loads(props[METADATA_KEY])


def resolve_backend(backend, device, amp=None, arch=None):
    """The inference backend to use: 'torch' or 'onnxruntime'.

    Args:
        backend (str): 'torch', 'onnxruntime' or 'auto': ONNX Runtime for an exportable arch on the CPU in float32
            when the ``onnx`` extra is installed (measured 1.9-3.2x faster there, ``scripts/benchmark_backends.py``),
            torch otherwise.
        device (torch.device): Where the network runs.
        amp (str | None): Requested autocast dtype; ONNX Runtime runs float32 only.
        arch (str | None): The net's class name; None skips the exportability check.

    Raises:
        ValueError: An unknown backend, or 'onnxruntime' with a CUDA device, autocast or an arch without export.
    """
    if backend not in BACKENDS + ('auto', ):
        raise ValueError(f'backend must be one of {BACKENDS + ("auto", )}, got {backend!r}.')
    exportable = arch is None or arch in EXPORT_SPECS
    if backend == 'auto':
        installed = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxruntime', 'onnxscript'))
        cpu_fp32 = torch.device(device).type == 'cpu' and not amp
        return 'onnxruntime' if installed and cpu_fp32 and exportable else 'torch'
    if backend == 'onnxruntime' and (torch.device(device).type != 'cpu' or amp or not exportable):
        raise ValueError(f'backend onnxruntime runs exportable archs ({sorted(EXPORT_SPECS)}) on the CPU in float32; '
                         f'got {arch or "a net"} on device {device} with amp {amp}. Use --backend torch.')
    return backend


def default_cache_dir():
    """Folder of :func:`cached_onnx`: ``$MIXCL_ONNX_CACHE``, else ``~/.cache/mixcl_arch/onnx``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser('~'), '.cache', 'mixcl_arch', 'onnx')


def cached_onnx(net, net_opt=None, cache_dir=None):
    """The ONNX export of ``net``, made on first use and reused while its weights and options stay the same.

    The file name holds a SHA-256 of :func:`export_metadata` (arch, options, mixcl_arch and torch versions) and of
    every state-dict tensor, so other weights, options or versions get a new export; writes are atomic, so processes
    sharing the cache never read a partial file.

    Args:
        net (nn.Module): A registered arch with its weights loaded.
        net_opt (dict | None): Its options (stored in the metadata).
        cache_dir (str | None): Cache folder; None -> :func:`default_cache_dir`.

    Returns:
        tuple[str, bool]: The ``.onnx`` path and whether it was exported by this call.
    """
    metadata = export_metadata(net, net_opt)
    digest = hashlib.sha256(json.dumps(metadata, sort_keys=True).encode())
    for key, value in net.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    path = os.path.join(cache_dir or default_cache_dir(), f"{metadata['arch']}-{digest.hexdigest()[:20]}.onnx")
    if os.path.isfile(path):
        return path, False
    save_onnx(export_program(net), path, metadata)
    return path, True


def max_abs_diff(a, b):
    """Largest absolute difference of two same-shape tensors (inf when the shapes differ)."""
    return float((a.float() - b.float()).abs().max()) if a.shape == b.shape else math.inf


def verify_export(net, sizes, onnx_path=None, pt2_path=None, seed=0):
    """Largest output differences of the exported files against eager ``net`` on random inputs.

    Args:
        net (nn.Module): The network that was exported (eval mode).
        sizes (list[tuple[int, int]]): (H, W) image sizes to try, batch 1.
        onnx_path (str | None): ONNX file to check with ONNX Runtime.
        pt2_path (str | None): .pt2 file to check with ``torch.export.load``.
        seed (int): Seed of the random inputs (:meth:`ExportSpec.example_inputs`).

    Returns:
        dict[str, dict[str, float]]: ``{'onnxruntime' | 'torch.export': {'HxW': max abs difference}}``.
    """
    spec, graph = export_spec(net), UnitRangeGraph(net.eval())
    backends = {}
    if onnx_path:
        backends['onnxruntime'] = OnnxRuntimeRunner(onnx_path).run
    if pt2_path:
        backends['torch.export'] = load_pt2(pt2_path)[0].module()
    torch.manual_seed(seed)
    out = {name: {} for name in backends}
    for h, w in sizes:
        inputs = list(spec.example_inputs(net, 1, h, w).values())
        with torch.no_grad():
            ref = graph(*inputs)
            for name, fn in backends.items():
                out[name][f'{h}x{w}'] = max_abs_diff(ref, fn(*inputs))
    return out


class OnnxRuntimeRunner:
    """An exported net run by ONNX Runtime on CPU, called like a restorer, with the same seamless tiling.

    Args:
        path (str): ``.onnx`` file written by :func:`save_onnx`.
        tile (int | None): Tile size; None or 0 runs whole images.
        tile_overlap (int): Overlap of neighbouring tiles (``mixcl_arch.utils.tiling.tiled_forward``).
        threads (int | None): ONNX Runtime intra-op threads; None -> ``torch.get_num_threads()``.
        cond (callable | None): Conditioning used when ``__call__`` gets none: the net's conditioner
            (:func:`mixcl_arch.conditioning.conditioner.build_conditioner` with ``online=True``), (B, 3, H, W) in
            [0, 1] -> (B, K, E).

    Attributes:
        name (str), num_params (int), num_cond (int), cond_dim (int), metadata (dict), notes (list[str]);
        ``net`` is None (no torch module).
    """

    net = None

    def __init__(self, path, tile=None, tile_overlap=32, threads=None, cond=None):
        import onnxruntime as ort
        self.metadata = read_onnx_metadata(path)
        if tile and (int(tile) <= int(tile_overlap) or int(tile_overlap) < 0):
            raise ValueError(f'Need tile > tile_overlap >= 0, got tile={tile}, tile_overlap={tile_overlap}.')
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        self.session = ort.InferenceSession(os.fspath(path), options, providers=['CPUExecutionProvider'])
        self.path = os.fspath(path)
        self.name = self.metadata['arch']
        self.num_params = int(self.metadata['num_params'])
        self.num_cond = int(self.metadata['num_cond'])
        self.cond_dim = int(self.metadata['cond_dim'])
        self.input_names = list(self.metadata['inputs'])
        self.tile = int(tile) if tile else None
        self.tile_overlap = int(tile_overlap)
        self.tile_align = int(self.metadata['tile_align'])
        self.cond = cond
        self.notes = list(getattr(cond, 'notes', []))

    def run(self, *inputs):
        """One session run: tensors in the order of ``metadata['inputs']`` -> the output as a float32 tensor."""
        if len(inputs) != len(self.input_names):
            raise ValueError(f'{self.path} takes inputs {self.input_names}, got {len(inputs)} tensors.')
        feeds = {k: v.detach().to('cpu', torch.float32).contiguous().numpy() for k, v in zip(self.input_names, inputs)}
        return torch.from_numpy(self.session.run(None, feeds)[0])

    @torch.no_grad()
    def __call__(self, x, cond=None):
        """Run the model, tiled for large images.

        Args:
            x (Tensor): (B, 3, H, W) float in [0, 1], any device.
            cond (Tensor | None): (B, K, E) conditioning for conditioned nets; None computes it with ``self.cond``.

        Returns:
            Tensor: The output clamped to [0, 1], float32, on ``x``'s device: (B, 3, H, W) dehazed, or what the
            net predicts (DehazeNet: (B, 1, H, W) transmission).
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'{self.name} (ONNX) input must be (B, 3, H, W), got {tuple(x.shape)}.')
        extra = ()
        if self.num_cond:
            if cond is None:
                if self.cond is None:
                    raise ValueError(f'{self.name} takes (B, {self.num_cond}, {self.cond_dim}) conditioning: pass '
                                     'cond, or build the runner with a conditioning source.')
                cond = self.cond(x)
            # conditioning comes from the whole image once, so every tile shares it
            extra = (cond.reshape(x.shape[0], self.num_cond, self.cond_dim), )
        out = tiled_forward(lambda t: self.run(t, *extra), x.cpu(), self.tile, self.tile_overlap,
                            align=self.tile_align)
        return out.clamp_(0, 1).to(x.device)
