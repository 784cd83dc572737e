"""``DehazeModel``: BasicSR's SRModel for dehazing networks that take the hazy image only (MixDehazeNet, AOD-Net).

Differences from :class:`basicsr.models.sr_model.SRModel`, and only those:

- data range: the data pipeline delivers [0, 1] images and the model feeds every net in the range it declares
  (``network_g.data_range``; a 'signed' net, the default of MixDehazeNet / MixCLDehazeNet, gets [-1, 1] and its
  output is mapped back), so losses, metrics and saved images are right with or without the key;
- ``val.tile`` (HAT's ``tile_size`` / ``tile_pad``): tiled validation and test, blended like the CLI;
- losses: ``pixel_opt`` (L1) and ``perceptual_opt`` as SRModel, plus ``cr_opt`` (contrastive regularisation with the
  hazy input as negative, key ``l_cr``);
- ``train.amp: bf16 | fp16 | ~`` (fp16 uses ``torch.amp.GradScaler``, whose state is saved in the training state),
  ``train.compile: false | true | <mode>`` (torch.compile of the training forward; on CPU only with
  ``train.compile_on_cpu: true``), ``train.ema_decay`` (SRModel's EMA; here BatchNorm buffers follow too and
  validation uses the EMA net), optimizers Adam / AdamW / any ``torch.optim`` class, one log line for frozen
  parameters;
- validation: metrics whose function has ``float_input = True`` (``calculate_psnr_dehaze``,
  ``calculate_ssim_dehaze``) get the float [0, 1] tensors, BasicSR's metrics the uint8 images; no-reference metrics
  (``calculate_niqe``) also run on datasets without GT; images are written atomically; ``val.save_best: psnr`` keeps
  ``net_g_best`` (the reference's best.pth); test runs write a per-image metrics CSV;
- checkpoints: ``pretrain_network_g`` loads BasicSR, official MixDehazeNet and safetensors files without running code
  (:func:`mixcl_arch.utils.checkpoint.load_network_weights`; ``path.allow_unsafe_pickle: true`` opts in to legacy
  pickles), ``param_key_g`` is strict; ``path.save_format: pth | safetensors`` picks ``net_g_*.pth`` or
  ``net_g_*.safetensors``; networks and training states are written atomically; network files record the arch,
  its ``data_range`` and ``network_g`` (``meta``), so the CLI rebuilds the net without ``--opt``.

A net that takes conditioning (MixCLDehazeNet, CLIPHazeNet unless ``cam: none``) is refused at construction:
:class:`mixcl_arch.models.mixcl_dehaze_model.MixCLDehazeModel` adds exactly that, by overriding :meth:`feed_data`,
:meth:`DehazeModel._run` and :meth:`DehazeModel._check_net_inputs`.
"""
import csv
import inspect
import io
import json
from collections import OrderedDict
from functools import partial
from os import path as osp

import torch
from basicsr.losses import build_loss
from basicsr.metrics import calculate_metric
from basicsr.models.sr_model import SRModel
from basicsr.utils import get_root_logger, tensor2img
from basicsr.utils.dist_util import master_only
from basicsr.utils.registry import METRIC_REGISTRY, MODEL_REGISTRY
from tqdm import tqdm

from mixcl_arch.utils.checkpoint import SAVE_FORMATS, load_network_weights, network_meta, save_weights_file
from mixcl_arch.utils.file_io import atomic_imwrite, atomic_torch_save, atomic_write_text
from mixcl_arch.utils.net_call import amp_dtype, cliphaze_inputs, run_net
from mixcl_arch.utils.options import OptionError, TileOptions
from mixcl_arch.utils.tiling import hat_tile_args, net_tile_align, tiled_forward


def _metric_takes_float(metric_opt):
    try:
        return bool(getattr(METRIC_REGISTRY.get(metric_opt['type']), 'float_input', False))
    except KeyError:
        return False


def _metric_needs_gt(metric_opt):
    """False for a no-reference metric, whose function takes no ``img2`` (e.g. BasicSR's ``calculate_niqe``)."""
    return 'img2' in inspect.signature(METRIC_REGISTRY.get(metric_opt['type'])).parameters


@MODEL_REGISTRY.register()
class DehazeModel(SRModel):
    """SRModel for dehazing nets that take the hazy image only; see the module docstring.

    Extra options (all optional):
        train.amp (str | None): 'bf16', 'fp16' or None.
        train.compile (bool | str): torch.compile the training forward (a mode string selects the mode).
        train.compile_on_cpu (bool): Allow compiling on CPU (off: logged and skipped).
        train.cr_opt (dict): Contrastive regularisation loss, e.g. ``{type: ContrastLossRes, loss_weight: 0.1}``.
        train.optim_g.type: 'Adam', 'AdamW' or any ``torch.optim`` optimizer name.
        val.tile (dict): ``{tile_size, tile_pad}`` for tiled validation / test (HAT's top-level ``tile`` works too).
    """

    def __init__(self, opt):
        self.amp_dtype = amp_dtype((opt.get('train') or {}).get('amp') if opt.get('is_train') else None, 'train.amp')
        super().__init__(opt)
        self._check_net_inputs()
        self.tile_opt = self._tile_options()

    # ----------------------------------------------------------------------------------------------------- setup
    def _bare_net(self):
        return self.get_bare_model(self.net_g)

    def _check_net_inputs(self):
        """Refuse a net that takes conditioning: it would be called without it."""
        net = self._bare_net()
        takes = [f'num_cond={net.num_cond}'] if getattr(net, 'num_cond', 0) else []
        takes += list(cliphaze_inputs(net))
        if takes:
            raise OptionError(f"model_type: {type(self).__name__} runs nets on the hazy image only, but network_g "
                              f"type {self.opt['network_g']['type']} takes conditioning ({', '.join(takes)}): use "
                              'model_type: MixCLDehazeModel.')

    def _tile_options(self):
        """``val.tile`` or HAT's top-level ``tile`` (not both) as :class:`TileOptions`; None when neither is set."""
        val_tile = (self.opt.get('val') or {}).get('tile')
        top_tile = self.opt.get('tile')
        if val_tile is not None and top_tile is not None:
            raise OptionError('tile and val.tile are both set; keep one (val.tile, or tile where HAT puts it).')
        if val_tile is not None:
            return TileOptions.from_dict('val.tile', val_tile)
        return TileOptions.from_dict('tile', top_tile) if top_tile is not None else None

    def init_training_settings(self):
        """SRModel's settings (EMA, L1/perceptual, optimizer, scheduler) plus CR loss, AMP scaler and compile."""
        train_opt = self.opt['train']
        if train_opt.get('cr_opt') is not None and train_opt.get('pixel_opt') is None \
                and train_opt.get('perceptual_opt') is None:
            raise ValueError('train.cr_opt is a regulariser: also set train.pixel_opt (L1).')
        super().init_training_settings()
        logger = get_root_logger()
        self.cri_cr = build_loss(train_opt['cr_opt']).to(self.device) if train_opt.get('cr_opt') else None
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler) if use_scaler else None
        if self.amp_dtype is not None:
            logger.info(f'Mixed precision: autocast {self.amp_dtype} on {self.device.type}'
                        f'{" with GradScaler" if use_scaler else ""}.')
        self._train_net = self.net_g
        compile_opt = train_opt.get('compile', False)
        if compile_opt:
            if self.device.type != 'cuda' and not train_opt.get('compile_on_cpu', False):
                logger.info('train.compile is set but CUDA is not available: skipping torch.compile on CPU '
                            '(set train.compile_on_cpu: true to force it).')
            else:
                mode = compile_opt if isinstance(compile_opt, str) else None
                self._train_net = torch.compile(self.net_g, mode=mode)
                logger.info(f'torch.compile of net_g for training (mode={mode}).')

    def get_optimizer(self, optim_type, params, lr, **kwargs):
        """Adam, AdamW or any ``torch.optim`` optimizer by name."""
        cls = getattr(torch.optim, optim_type, None)
        if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
            raise ValueError(f'train.optim_g.type: unknown optimizer {optim_type!r} (e.g. Adam, AdamW, SGD).')
        return cls(params, lr, **kwargs)

    def setup_optimizers(self):
        """SRModel's, with one log line for the frozen parameters instead of BasicSR's warning per tensor.

        MixCLDehazeNet freezes 9 tensors per text fusion on purpose (see ``CLIPTextFusion``); BasicSR warned
        "Params text_emb.* will not be optimized" for each, as if something were wrong.
        """
        from mixcl_arch.archs.mixdehazenet_arch import CLIPTextFusion
        net = self._bare_net()
        params = dict(net.named_parameters())
        frozen = [name for name, p in params.items() if not p.requires_grad]
        if frozen:
            fusions = [name for name, m in net.named_modules() if isinstance(m, CLIPTextFusion)]
            in_fusion = {k: f for f in fusions for k in frozen if k.startswith(f + '.')}
            others = [k for k in frozen if k not in in_fusion]
            parts = []
            if in_fusion:
                names = ', '.join(sorted({k[len(f) + 1:] for k, f in in_fusion.items()}))
                parts.append(f'{names} of the text fusion(s) {", ".join(fusions)}, by design: the reference\'s '
                             'text-update branch and k2.bias never reach the output, kept only so that official '
                             'weights load strictly')
            if others:
                parts.append(f'{", ".join(others)} (requires_grad=False in network_g)')
            numel = sum(params[k].numel() for k in frozen)
            get_root_logger().info(f'Frozen, not optimized: {len(frozen)} parameter tensors ({numel} values): '
                                   f'{"; ".join(parts)}.')
        optim_type = self.opt['train']['optim_g'].pop('type')
        self.optimizer_g = self.get_optimizer(optim_type, [p for p in params.values() if p.requires_grad],
                                              **self.opt['train']['optim_g'])
        self.optimizers.append(self.optimizer_g)

    def model_ema(self, decay=0.999):
        """EMA of the parameters (as BasicSR) and a copy of the buffers (BatchNorm running statistics).

        BasicSR averages parameters only, which leaves an EMA net with BatchNorm layers on its initial statistics.
        """
        super().model_ema(decay)
        net_g = self._bare_net()
        ema_buffers = dict(self.net_g_ema.named_buffers())
        for name, buf in net_g.named_buffers():
            ema_buffers[name].data.copy_(buf.data)

    # ------------------------------------------------------------------------------------------------------ data
    def feed_data(self, data):
        """Takes 'lq' (B, 3, H, W) and, when present, 'gt' (B, 3, H, W); other keys of the batch are ignored."""
        self.lq = data['lq'].to(self.device)
        if 'gt' in data:
            self.gt = data['gt'].to(self.device)
        elif hasattr(self, 'gt'):
            del self.gt

    def _run(self, net, lq, tiles=None):
        """``net`` on [0, 1] images ``lq`` -> [0, 1] output, whatever the net's ``data_range`` (the data pipeline always
        delivers [0, 1]; :func:`mixcl_arch.utils.net_call.run_net` converts). The one forward of training, validation
        and test: MixCLDehazeModel overrides it to feed the conditioning.

        Args:
            net (nn.Module): ``net_g`` (possibly DDP / compiled) or ``net_g_ema``.
            lq (Tensor): (B, 3, H, W) in [0, 1].
            tiles (tuple[int, int] | None): (tile, overlap) of :func:`mixcl_arch.utils.tiling.tiled_forward` to run
                ``lq`` as blended tiles on the net's grid; None: the whole image at once.

        Returns:
            Tensor: (B, 3, H, W) in [0, 1].
        """
        fn = partial(run_net, net, data_range=getattr(self._bare_net(), 'data_range', 'unit'))
        return fn(lq) if tiles is None else tiled_forward(fn, lq, *tiles, align=net_tile_align(net))

    # -------------------------------------------------------------------------------------------------- training
    def optimize_parameters(self, current_iter):
        self.optimizer_g.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            self.output = self._run(self._train_net, self.lq)
            output = self.output.float()
            l_total = 0
            loss_dict = OrderedDict()
            if self.cri_pix:
                l_pix = self.cri_pix(output, self.gt)
                l_total += l_pix
                loss_dict['l_pix'] = l_pix
            if self.cri_perceptual:
                l_percep, l_style = self.cri_perceptual(output, self.gt)
                if l_percep is not None:
                    l_total += l_percep
                    loss_dict['l_percep'] = l_percep
                if l_style is not None:
                    l_total += l_style
                    loss_dict['l_style'] = l_style
            if self.cri_cr:
                l_cr = self.cri_cr(output, self.gt, self.lq).float()
                l_total += l_cr
                loss_dict['l_cr'] = l_cr
        if self.scaler is not None:
            self.scaler.scale(l_total).backward()
            self.scaler.step(self.optimizer_g)
            self.scaler.update()
        else:
            l_total.backward()
            self.optimizer_g.step()

        self.log_dict = self.reduce_loss_dict(loss_dict)
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)

    # ------------------------------------------------------------------------------------------------ inference
    def test(self):
        """Forward ``lq`` through net_g_ema when EMA is on, else the bare net_g (eval).

        With ``val.tile`` (``tile_size``, ``tile_pad``; HAT's top-level ``tile`` works too) the image is processed as
        tiles of ``tile_size`` with ``tile_pad`` pixels of context on every side, blended seamlessly on the net's grid
        as the CLI does (:func:`mixcl_arch.utils.tiling.hat_tile_args`). Validation in training and test.py both come
        here.
        """
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self._bare_net()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            tiles = None if self.tile_opt is None else hat_tile_args(self.tile_opt.tile_size, self.tile_opt.tile_pad)
            self.output = self._run(net, self.lq, tiles)
        if was_training:
            net.train()

    def nondist_validation(self, dataloader, current_iter, tb_logger, save_img):
        """SRModel's validation with float-input and no-reference metrics, GT-less datasets, atomic image writes, the
        best checkpoint and a per-image CSV.

        - A metric whose function takes no ``img2`` is no-reference (BasicSR's ``calculate_niqe``; give it
          ``better: lower``) and is computed on every output; the others on outputs with GT. Metrics without any
          value (no GT in the dataset) are left out with a warning.
        - ``val.save_best: <metric>`` (training, one validation dataset): every new best of that metric (ties
          included, as BasicSR's ``best_metric_results``) saves ``net_g_best`` as ``SRModel.save`` does (``params``,
          plus ``params_ema`` with EMA), then ``net_g_best.json`` (metric, value, iter) beside it; a resumed run
          compares with that record, so a worse model never replaces the best one.
        - Test runs (``path.log`` set, as BasicSR's ``parse_options`` does) write
          ``<path.log>/<dataset name>_per_image.csv``: ``image`` then one column per metric (the reference test.py's
          results.csv), empty where a metric has no value.
        """
        dataset_name = dataloader.dataset.opt['name']
        metrics_opt = self.opt['val'].get('metrics') or {}
        use_pbar = self.opt['val'].get('pbar', False)
        needs_gt = {name: _metric_needs_gt(opt_) for name, opt_ in metrics_opt.items()}
        values = {name: [] for name in metrics_opt}
        rows = []
        if metrics_opt:
            self._initialize_best_metric_results(dataset_name)
        pbar = tqdm(total=len(dataloader), unit='image') if use_pbar else None
        logger = get_root_logger()
        for val_data in dataloader:
            img_name = osp.splitext(osp.basename(val_data['lq_path'][0]))[0]
            self.feed_data(val_data)
            self.test()
            output = self.output.detach().float().clamp(0, 1).cpu()
            sr_img = tensor2img([output])
            row = {}
            has_gt = hasattr(self, 'gt')
            if has_gt:
                gt = self.gt.detach().float().clamp(0, 1).cpu()
                gt_img = tensor2img([gt])
                del self.gt
            for name, opt_ in metrics_opt.items():
                if needs_gt[name] and not has_gt:
                    continue
                float_in = _metric_takes_float(opt_)
                data = dict(img=output if float_in else sr_img)
                if needs_gt[name]:
                    data['img2'] = gt if float_in else gt_img
                row[name] = calculate_metric(data, opt_)
                values[name].append(row[name])
            rows.append((img_name, row))
            del self.lq
            del self.output
            if save_img:
                if self.opt['is_train']:
                    save_path = osp.join(self.opt['path']['visualization'], img_name, f'{img_name}_{current_iter}.png')
                else:
                    suffix = self.opt['val'].get('suffix') or self.opt['name']
                    save_path = osp.join(self.opt['path']['visualization'], dataset_name, f'{img_name}_{suffix}.png')
                atomic_imwrite(sr_img, save_path)
            if pbar is not None:
                pbar.update(1)
                pbar.set_description(f'Test {img_name}')
        if pbar is not None:
            pbar.close()

        skipped = [name for name, v in values.items() if not v]
        if skipped:
            logger.warning(f'Validation {dataset_name}: no ground truth in the dataset, metrics {skipped} skipped.')
        results = {name: sum(v) / len(v) for name, v in values.items() if v}
        if results:  # else the previous results stay, as in BasicSR
            self.metric_results = results
            for name, value in results.items():
                self._update_best_metric_result(dataset_name, name, value, current_iter)
            self._log_validation_metric_values(current_iter, dataset_name, tb_logger)
        if self.opt['is_train'] and self.opt['val'].get('save_best'):
            self._save_best_network(results, current_iter)
        if not self.opt['is_train'] and metrics_opt and self.opt['path'].get('log'):
            self._write_per_image_csv(dataset_name, list(metrics_opt), rows)

    def _save_best_network(self, results, current_iter):
        """``val.save_best``: ``net_g_best`` + ``net_g_best.json`` when ``results`` (metric -> mean of this validation)
        are at least as good as the record."""
        metric = self.opt['val']['save_best']
        val_sets = [key for key in self.opt['datasets'] if key.startswith('val')]
        if len(val_sets) != 1:
            raise ValueError(f'val.save_best needs exactly one validation dataset, got {val_sets}.')
        if metric not in results:
            raise ValueError(f'val.save_best: {metric!r} is not a computed validation metric (computed: '
                             f'{sorted(results)}; val.metrics: {sorted(self.opt["val"]["metrics"])}).')
        value = results[metric]
        higher = self.opt['val']['metrics'][metric].get('better', 'higher') == 'higher'
        record_path = osp.join(self.opt['path']['models'], 'net_g_best.json')
        if osp.isfile(record_path):
            try:
                with open(record_path) as f:
                    record = json.load(f)
                best = float(record['value']) if record['metric'] == metric else None
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f'{record_path}: not a best-checkpoint record ({err}); delete it to start over.') \
                    from None
            if best is not None and (value < best if higher else value > best):
                return
        if hasattr(self, 'net_g_ema'):
            self.save_network([self.net_g, self.net_g_ema], 'net_g', 'best', param_key=['params', 'params_ema'])
        else:
            self.save_network(self.net_g, 'net_g', 'best')
        atomic_write_text(json.dumps({'metric': metric, 'value': value, 'iter': current_iter}) + '\n', record_path)
        get_root_logger().info(f'Best {metric} {value:.4f} at iter {current_iter}: saved net_g_best.')

    def _write_per_image_csv(self, dataset_name, metric_names, rows):
        """``<path.log>/<dataset_name>_per_image.csv`` from (image name, {metric: value}) rows."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator='\n')
        writer.writerow(['image'] + metric_names)
        for img_name, row in rows:
            writer.writerow([img_name] + [f'{row[m]:.6f}' if m in row else '' for m in metric_names])
        path = osp.join(self.opt['path']['log'], f'{dataset_name}_per_image.csv')
        atomic_write_text(buf.getvalue(), path)
        get_root_logger().info(f'Per-image metrics: {path}')

    # ---------------------------------------------------------------------------------------------- checkpoints
    def load_network(self, net, load_path, strict=True, param_key='params'):
        """Load BasicSR (``params`` / ``params_ema``), official (``state_dict``, ``module.``) or safetensors weights.

        ``param_key`` (``path.param_key_g``) must be in the file; ``params`` also takes the single network of an
        official or bare file. Only BasicSR's own seeding of ``net_g_ema`` (key ``params_ema``) picks the keys
        automatically, so a file without EMA weights starts the EMA from its network weights, as in BasicSR.
        ``path.allow_unsafe_pickle: true`` lets a legacy pickled file load (it can run code; warns).

        Raises:
            FileNotFoundError: Missing file. ValueError: A file that does not load safely, a missing key, missing /
                unexpected keys or shape mismatches.
        """
        if net is getattr(self, 'net_g_ema', None) and param_key == 'params_ema':
            param_key = None
        net = self.get_bare_model(net)
        unsafe = self.opt['path'].get('allow_unsafe_pickle', False) is True
        load_network_weights(net, load_path, param_key=param_key, strict=strict, allow_unsafe_pickle=unsafe)
        get_root_logger().info(f'Loaded {type(net).__name__} from {load_path} (key: {param_key or "auto"}).')

    @master_only
    def save_network(self, net, net_label, current_iter, param_key='params'):
        """BasicSR's ``net_{label}_{iter}.pth`` (``latest`` for -1), written atomically.

        With ``path.save_format: safetensors`` the file is ``net_{label}_{iter}.safetensors`` holding the same keys
        (see :func:`mixcl_arch.utils.checkpoint.save_weights_file`). Both record what the weights are (arch,
        ``data_range``, ``network_g``: :func:`mixcl_arch.utils.checkpoint.network_meta`), which the CLI uses.
        """
        if current_iter == -1:
            current_iter = 'latest'
        fmt = self.opt['path'].get('save_format') or 'pth'
        if fmt not in SAVE_FORMATS:
            raise ValueError(f'path.save_format must be one of {SAVE_FORMATS}, got {fmt!r}.')
        save_path = osp.join(self.opt['path']['models'], f'{net_label}_{current_iter}.{fmt}')
        nets = net if isinstance(net, list) else [net]
        keys = param_key if isinstance(param_key, list) else [param_key]
        if len(nets) != len(keys):
            raise ValueError(f'save_network: {len(nets)} networks but {len(keys)} param keys.')
        save_dict = {}
        for net_, key in zip(nets, keys):
            state = self.get_bare_model(net_).state_dict()
            save_dict[key] = OrderedDict(
                (k[len('module.'):] if k.startswith('module.') else k, v.detach().cpu()) for k, v in state.items())
        meta = network_meta(self.opt['network_g'], self.get_bare_model(nets[0]))
        save_weights_file(save_dict, save_path, fmt, meta=meta)

    @master_only
    def save_training_state(self, epoch, current_iter):
        """``{iter}.state`` with optimizers, schedulers and the fp16 GradScaler, written atomically."""
        if current_iter == -1:
            return
        state = {
            'epoch': epoch,
            'iter': current_iter,
            'optimizers': [o.state_dict() for o in self.optimizers],
            'schedulers': [s.state_dict() for s in self.schedulers],
        }
        if getattr(self, 'scaler', None) is not None:
            state['scaler'] = self.scaler.state_dict()
        atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))

    def resume_training(self, resume_state):
        """Restore optimizers, schedulers and (fp16) the GradScaler."""
        super().resume_training(resume_state)
        if getattr(self, 'scaler', None) is not None and resume_state.get('scaler'):
            self.scaler.load_state_dict(resume_state['scaler'])
