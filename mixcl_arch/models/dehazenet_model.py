"""``DehazeNetModel``: trains a transmission estimator (DehazeNet) and validates the recovered clear image.

A small override of :class:`mixcl_arch.models.dehaze_model.DehazeModel` (BasicSR's SRModel with atomic checkpoints,
float-input metrics, EMA and AMP; no conditioning):

- training batches come from :class:`mixcl_arch.data.transmission_patch_dataset.TransmissionPatchDataset`: 'lq' the
  hazy patch, 'gt' the (B, 1, P, P) transmission map; the loss is ``train.pixel_opt`` (BasicSR ``MSELoss``) between
  the predicted and the true t maps, logged as ``l_pix``;
- validation / test batches are hazy/GT image pairs ('gt' (B, 3, H, W)): ``test()`` predicts t on the whole image,
  recovers J with :func:`mixcl_arch.baselines.dehazenet.dehazenet_dehaze` and the metrics (``val.metrics``, e.g.
  ``calculate_psnr_dehaze`` / ``calculate_ssim_dehaze``) compare J with the GT, i.e. dehazing PSNR/SSIM, not the
  transmission error.

Options added (all optional): ``val.recovery``, the recovery options read by
:meth:`mixcl_arch.baselines.dehazenet.DehazeNetRecoveryParams.from_mapping` (typed YAML values: ``a_normalize``
true, ``top_ratio`` 0.01, ``atmo_mode`` brightest_grey, ``a_min`` 0.05, ``refine`` true, ``gf_radius`` 30,
``gf_window`` null, ``gf_border`` clip, ``gf_eps`` 1.0e-3, ``t0`` 0.1, ``clamp`` true) plus ``tile`` (null: whole
image) and ``tile_overlap`` (32) for the network pass on large images.
"""
import torch
from basicsr.utils.registry import MODEL_REGISTRY

from mixcl_arch.baselines.dehazenet import DehazeNetRecoveryParams, dehazenet_dehaze, predict_transmission
from mixcl_arch.models.dehaze_model import DehazeModel


@MODEL_REGISTRY.register()
class DehazeNetModel(DehazeModel):
    """Transmission regression (MSE) with dehazing validation; see the module docstring.

    Raises:
        ValueError: At construction, for unknown ``val.recovery`` keys or values, a network that does not map
            (B, 3, H, W) to a one-channel map, or training losses other than ``pixel_opt``.
    """

    def __init__(self, opt):
        self.recovery = DehazeNetRecoveryParams.from_mapping((opt.get('val') or {}).get('recovery'), 'val.recovery')
        self.gt_is_t = False
        super().__init__(opt)
        self._check_net()

    def _check_net(self):
        net = self._bare_net()
        probe = torch.zeros(1, 3, 32, 32, device=self.device)
        with torch.no_grad():
            out = predict_transmission(net, probe)
        if out.shape != (1, 1, 32, 32):
            raise ValueError(f'DehazeNetModel needs a transmission net mapping (B, 3, H, W) to (B, 1, H, W) (e.g. '
                             f'network_g type DehazeNet); {type(net).__name__} gave {tuple(out.shape)} for a 32x32 '
                             'input.')

    def init_training_settings(self):
        """SRModel's settings; only ``pixel_opt`` (MSE on t) is meaningful for a transmission net."""
        train_opt = self.opt['train']
        extra = [k for k in ('perceptual_opt', 'cr_opt') if train_opt.get(k)]
        if extra:
            raise ValueError(f'DehazeNetModel regresses a transmission map: remove train.{extra[0]} (only '
                             'train.pixel_opt, e.g. MSELoss, applies).')
        if not train_opt.get('pixel_opt'):
            raise ValueError('DehazeNetModel needs train.pixel_opt (e.g. {type: MSELoss, loss_weight: 1.0}).')
        super().init_training_settings()

    def feed_data(self, data):
        """'lq' (B, 3, H, W); 'gt' either a transmission target (B, 1, P, P) or a clear image (B, 3, H, W)."""
        self.lq = data['lq'].to(self.device)
        gt = data.get('gt')
        if gt is None:
            if hasattr(self, 'gt'):
                del self.gt
            self.gt_is_t = False
            return
        if gt.dim() != 4 or gt.shape[1] not in (1, 3):
            raise ValueError(f"DehazeNetModel: batch 'gt' must be a (B, 1, P, P) transmission map or a (B, 3, H, W) "
                             f'clear image, got {tuple(gt.shape)}.')
        self.gt_is_t = gt.shape[1] == 1
        self.gt = gt.to(self.device)

    def optimize_parameters(self, current_iter):
        if not self.gt_is_t:
            shape = tuple(self.gt.shape) if hasattr(self, 'gt') else None
            raise ValueError(f"DehazeNetModel trains on transmission targets: the training dataset must give 'gt' "
                             f'of shape (B, 1, P, P) (type TransmissionPatchDataset), got {shape}.')
        super().optimize_parameters(current_iter)

    def test(self):
        """Predict t, then recover J: ``self.output`` (B, 3, H, W), ``self.t_pred`` (B, 1, H, W) refined t.

        A transmission batch (gt with one channel) instead sets ``self.output`` to the predicted t map.
        """
        net = self.net_g_ema if hasattr(self, 'net_g_ema') else self._bare_net()
        was_training = net.training
        net.eval()
        with torch.no_grad():
            if self.gt_is_t:
                self.output = self.t_pred = predict_transmission(net, self.lq, self.recovery.tile,
                                                                 self.recovery.tile_overlap)
            else:
                out = dehazenet_dehaze(net, self.lq, self.recovery)
                self.output = out['J']
                self.t_pred = out['t']
                self.atmo_light = out['A']
        if was_training:
            net.train()
