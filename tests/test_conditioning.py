"""The conditioning package: one config, one conditioner per source, kinds (vector stack, density map, embedding)."""
import pytest
import torch

from _clip_helpers import make_tiny_clip, tiny_clip_opt
from mixcl_arch.archs.cliphaze_arch import CLIPHazeNet
from mixcl_arch.archs.mixdehazenet_arch import MixCLDehazeNet, MixDehazeNet
from mixcl_arch.clip.prior import CLIPPrior
from mixcl_arch.clip.store import FeatureStore
from mixcl_arch.conditioning.conditioner import (CLIPConditioner, CondBatch, DomainConditioner, NoneConditioner,
                                                 OracleConditioner, StoreConditioner, build_conditioner)
from mixcl_arch.conditioning.config import ConditioningConfig
from mixcl_arch.conditioning.kinds import KINDS, Kind, apply_crop, net_kinds, register_kind
from mixcl_arch.data.clip_data_util import standin_text_feature
from mixcl_arch.utils.options import OptionError


@pytest.fixture(scope='module')
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp('clip') / 'tiny.pt')


def mixcl(num_cond=1):
    return MixCLDehazeNet(variant='T', num_cond=num_cond, data_range='unit').eval()


def cfg_of(**sections):
    return ConditioningConfig.from_options(sections)


# ------------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize('opt, key', [
    ({'conditioning': {'source': 'feature'}}, 'conditioning.source'),
    ({'conditioning': {'mode': 'medium'}}, 'conditioning.mode'),
    ({'conditioning': {'extra': 'image'}}, 'conditioning.extra'),
    ({'conditioning': {'extra': ['nosuchset']}}, 'conditioning.extra'),
    ({'conditioning': {'source': 'domain'}}, 'conditioning.domain'),
    ({'conditioning': {'fallback': 'outdoor'}}, 'conditioning.store'),
    ({'conditioning': {'source': 'oracle', 'extra': ['image']}}, 'conditioning.extra'),
    ({'conditioning': {'sorce': 'clip'}}, 'conditioning.sorce'),
    ({'clip': {'modle': 'RN50'}}, 'clip.modle'),
    ({'cliphaze_cond': {'density_source': 'magic'}}, 'cliphaze_cond.density_source'),
])
def test_config_errors_name_the_key_and_value(opt, key):
    with pytest.raises(OptionError, match=key.replace('.', r'\.')):
        ConditioningConfig.from_options(opt)


@pytest.mark.parametrize('opt, old, new', [
    ({'clip': {'cond_mode': 'soft'}}, 'clip.cond_mode', 'conditioning.mode'),
    ({'clip': {'feature_store': 'x.pt'}}, 'clip.feature_store', 'conditioning.store'),
    ({'datasets': {'train': {'cond_source': 'store'}}}, 'datasets.train.cond_source', 'conditioning.source'),
    ({'datasets': {'val': {'cond_extra': ['image']}}}, 'datasets.val.cond_extra', 'conditioning.extra'),
    ({'datasets': {'val': {'cliphaze_cond': {}}}}, 'datasets.val.cliphaze_cond', 'top-level cliphaze_cond'),
])
def test_old_keys_fail_naming_their_new_place(opt, old, new):
    with pytest.raises(OptionError, match=rf'{old.replace(".", chr(92) + ".")}.*moved to .*{new}'):
        ConditioningConfig.from_options(opt)


def test_config_is_frozen_and_parses_every_section():
    cfg = cfg_of(clip={'model': 'RN50', 'domains': ['a', 'b']}, conditioning={'source': 'none', 'mode': 'soft'},
                 cliphaze_cond={'density_source': 'dcp', 'standin_domain': 'a'})
    assert (cfg.source, cfg.mode, cfg.extra, cfg.fallback) == ('none', 'soft', (), 'error')
    assert cfg.clip.as_dict() == {'model': 'RN50', 'domains': ['a', 'b']}
    assert cfg.cliphaze.density_source == 'dcp' and cfg.cliphaze.embedding_source == 'standin'
    with pytest.raises(Exception):
        cfg.source = 'clip'


# ------------------------------------------------------------------------------------------------------- kinds
def test_kinds_follow_what_the_net_takes():
    cfg = cfg_of(conditioning={'extra': ['image']})
    assert net_kinds(MixDehazeNet(variant='T'), cfg) == []
    assert [k.name for k in net_kinds(mixcl(2), cfg)] == ['cond']
    with pytest.raises(ValueError, match='network_g.num_cond'):
        net_kinds(mixcl(1), cfg)
    assert [k.name for k in net_kinds(CLIPHazeNet(variant='T', cam='full'), cfg_of())] == ['density', 'embedding']
    assert net_kinds(CLIPHazeNet(variant='T', cam='none'), cfg_of()) == []


def test_apply_crop_matches_the_same_transform_of_the_full_resolution_map():
    torch.manual_seed(0)
    full = torch.rand(1, 32, 48)
    scale = 8
    stored = torch.nn.functional.avg_pool2d(full[None], scale)[0]  # (1, 4, 6)
    for hflip, vflip, k in [(0, 0, 0), (1, 0, 0), (0, 1, 1), (1, 1, 3), (0, 0, 2)]:
        crop = torch.tensor([8, 16, 16, 24, hflip, vflip, k])
        img_crop = full[:, 8:24, 16:40]
        if hflip:
            img_crop = img_crop.flip(-1)
        if vflip:
            img_crop = img_crop.flip(-2)
        img_crop = torch.rot90(img_crop, k, dims=(1, 2))
        expect = torch.nn.functional.avg_pool2d(img_crop[None], scale)[0]
        assert torch.allclose(apply_crop(stored, crop, scale), expect, atol=1e-6), (hflip, vflip, k)


# ------------------------------------------------------------------------------------------------------ sources
def test_none_and_domain_and_oracle_sources(tmp_path):
    net = mixcl()
    images = torch.rand(3, 3, 16, 16)
    cond = build_conditioner(cfg_of(conditioning={'source': 'none'}), net)
    assert isinstance(cond, NoneConditioner) and torch.equal(cond(images), torch.zeros(3, 1, 512))

    feats = {'indoor': torch.nn.functional.normalize(torch.randn(512), dim=0),
             'outdoor': torch.nn.functional.normalize(torch.randn(512), dim=0)}
    store = tmp_path / 'text.pt'
    torch.save({'domain_text': feats}, store)
    cond = build_conditioner(cfg_of(conditioning={'source': 'domain', 'domain': 'outdoor', 'store': str(store)}), net)
    assert isinstance(cond, DomainConditioner)
    assert torch.equal(cond(images), feats['outdoor'].expand(3, 1, 512))
    with pytest.raises(ValueError, match='sky'):
        build_conditioner(cfg_of(conditioning={'source': 'domain', 'domain': 'sky', 'store': str(store)}), net)

    oracle = build_conditioner(cfg_of(conditioning={'source': 'oracle'}), net)
    assert isinstance(oracle, OracleConditioner)
    out = oracle(CondBatch(images, domains=('indoor', 'outdoor', 'indoor')))
    assert torch.equal(out[:, 0], torch.stack([standin_text_feature(d, 512) for d in ('indoor', 'outdoor', 'indoor')]))
    with pytest.raises(ValueError, match='meta_file'):
        oracle(images)
    with_store = build_conditioner(cfg_of(conditioning={'source': 'oracle', 'store': str(store)}), net)
    assert torch.equal(with_store(CondBatch(images, domains=('outdoor',) * 3))[:, 0], feats['outdoor'].expand(3, 512))


def test_clip_source_equals_the_prior_and_falls_back_as_configured(tiny_clip, tmp_path):
    net = mixcl(2)
    opt = {'clip': tiny_clip_opt(tiny_clip), 'conditioning': {'extra': ['image'], 'mode': 'soft'}}
    cond = build_conditioner(ConditioningConfig.from_options(opt), net)
    assert isinstance(cond, CLIPConditioner)
    images = torch.rand(2, 3, 40, 48)
    prior = CLIPPrior(**tiny_clip_opt(tiny_clip))
    ref = prior(images)
    assert torch.allclose(cond(images), torch.stack([ref['text_soft'], ref['image_emb']], dim=1), atol=1e-6)

    missing = dict(opt, clip=tiny_clip_opt(tmp_path / 'absent.pt'))
    with pytest.raises(RuntimeError, match='conditioning.fallback'):
        build_conditioner(ConditioningConfig.from_options(missing), net)
    none = build_conditioner(ConditioningConfig.from_options(
        dict(missing, conditioning={'extra': ['image'], 'fallback': 'none'})), net)
    assert isinstance(none, NoneConditioner) and 'ZERO' in none.notes[0]


def test_store_source_reads_rows_by_key_and_checks_the_store_at_build(tiny_clip, tmp_path):
    prior = CLIPPrior(**tiny_clip_opt(tiny_clip))
    images = torch.rand(3, 3, 40, 48)
    store = FeatureStore.from_prior(prior)
    store.add(['a', 'b', 'c'], prior(images))
    path = tmp_path / 'store.pt'
    store.save(path)
    cfg = cfg_of(clip=tiny_clip_opt(tiny_clip), conditioning={'source': 'store', 'extra': ['image']})
    cond = build_conditioner(cfg, mixcl(2), stores=[str(path)])
    assert isinstance(cond, StoreConditioner)
    out = cond(CondBatch(images[[2, 0]], keys=('c', 'a'), stores=(str(path),) * 2))
    ref = prior(images[[2, 0]])
    assert torch.allclose(out, torch.stack([ref['text_hard'], ref['image_emb']], dim=1), atol=1e-5)
    with pytest.raises(ValueError, match='not in the feature store'):
        cond(CondBatch(images[:1], keys=('zzz',), stores=(str(path),)))
    other = cfg_of(clip=tiny_clip_opt(tiny_clip, domains=['day', 'night']), conditioning={'source': 'store'})
    with pytest.raises(ValueError, match='domains'):
        build_conditioner(other, mixcl(1), stores=[str(path)])
    with pytest.raises(ValueError, match='no density maps'):
        build_conditioner(cfg_of(clip=tiny_clip_opt(tiny_clip), conditioning={'source': 'store'}),
                          CLIPHazeNet(variant='T'), stores=[str(path)])


def test_online_source_builds_no_prior_for_the_stand_ins():
    cfg = cfg_of(cliphaze_cond={'density_source': 'dcp', 'standin_domain': 'indoor'},
                 clip={'pretrained': '/nonexistent/clip.pt'})
    net = CLIPHazeNet(variant='T')
    cond = build_conditioner(cfg, net)
    assert isinstance(cond, CLIPConditioner) and cond.prior is None and 'NOT CLIP' in cond.notes[0]
    out = cond(torch.rand(1, 3, 32, 32))
    assert isinstance(out, dict) and set(out) == {k for k in ('density', 'embedding') if getattr(net, f'needs_{k}')}
    if 'density' in out:
        assert out['density'].shape == (1, 1, 32, 32)
    if 'embedding' in out:
        assert torch.allclose(out['embedding'][0], standin_text_feature('indoor', 512))


# ------------------------------------------------------------------------------------------- adding a kind
def test_a_new_kind_is_one_class(monkeypatch):
    """docs/clip.md "Adding a kind": a registered class is offered to every net that declares it."""

    class HazeLevel(Kind):
        name = 'haze_level'

        @classmethod
        def for_net(cls, net, cfg):
            return cls() if getattr(net, 'needs_haze_level', False) else None

        def needs_prior(self, cfg):
            return False

        def online(self, prior, batch, cfg):
            return 1 - batch.images.amin(dim=(1, 2, 3))[:, None]

        def from_domains(self, labels, vectors, batch, cfg):
            return batch.images.new_zeros(batch.images.shape[0], 1)

    monkeypatch.setattr('mixcl_arch.conditioning.kinds.KINDS', list(KINDS))  # the registration ends with the test
    register_kind(HazeLevel)

    class LevelNet(torch.nn.Module):
        needs_haze_level = True

        def forward(self, x, haze_level):
            return x * haze_level[:, :, None, None]

    cond = build_conditioner(cfg_of(), LevelNet())
    images = torch.full((2, 3, 4, 4), 0.25)
    assert torch.allclose(cond(images)['haze_level'], torch.full((2, 1), 0.75))
    assert torch.equal(build_conditioner(cfg_of(conditioning={'source': 'none'}), LevelNet())(images)['haze_level'],
                       torch.zeros(2, 1))
