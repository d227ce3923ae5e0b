"""Blocks against their public PyTorch references after weight conversion.

timm blocks are built with random weights and random BatchNorm statistics,
converted with ``attnzoo.convert.block_from_torch`` and compared in eval mode
on random inputs. DANet PAM/CAM, mmcv's criss-cross and non-local and the
official PSA code are not installable, so they are written here in PyTorch
from their equations (the official forward passes, NCHW), with the
references' parameter names.

Tolerance: max |attnzoo - reference| / max |reference| <= 1e-5 in float32.
"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")  # timm imports only beside torchvision
timm_layers = pytest.importorskip("timm.layers")
from timm.layers.cbam import CbamModule  # noqa: E402
from timm.layers.coord_attn import CoordAttn  # noqa: E402
from torch import nn as tnn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from attnzoo import blocks  # noqa: E402
from attnzoo.convert import ConversionError, block_from_torch  # noqa: E402

TOL = 1e-5


def randomize(module, seed=0):
    """Random weights and BN statistics (never the zero/one defaults)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            std = p[0].numel() ** -0.5 if p.ndim > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return module.eval()


def reference(torch_module, x_nchw):
    """The reference's output in float64 (the module is left in float32)."""
    with torch.no_grad():
        out = torch_module.double()(torch.from_numpy(x_nchw).double()).numpy()
    torch_module.float()
    return out


def compare(name, torch_module, x_nchw, tol=TOL, **block_kwargs):
    want = reference(torch_module, x_nchw)
    variables = block_from_torch(name, torch_module.state_dict(), **block_kwargs)
    block = blocks.create(name, **block_kwargs)
    got = np.asarray(jax.jit(block.apply)(variables, x_nchw.transpose(0, 2, 3, 1)))
    got = got.transpose(0, 3, 1, 2)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= tol, f"{name}: max relative error {err:.2e} > {tol:.0e}"
    return got


def image(c, h=9, w=11, b=2, seed=1):
    return np.random.default_rng(seed).standard_normal((b, c, h, w)).astype(np.float32)


# -- timm ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"rd_ratio": 0.25, "add_maxpool": True}])
def test_se(kwargs):
    ref = randomize(timm_layers.SEModule(64, **kwargs))
    compare("se", ref, image(64), channels=64, **kwargs)


def test_se_with_norm():
    ref = randomize(timm_layers.SEModule(32, norm_layer=tnn.BatchNorm2d))
    compare("se", ref, image(32), channels=32, norm=True)


def test_effective_se():
    ref = randomize(timm_layers.EffectiveSEModule(48))
    compare("ese", ref, image(48), channels=48)


@pytest.mark.parametrize("channels", [16, 64, 256])
def test_eca(channels):
    ref = randomize(timm_layers.EcaModule(channels))
    assert ref.conv.kernel_size[0] == blocks.eca_kernel_size(channels)
    compare("eca", ref, image(channels), channels=channels)


def test_cbam():
    ref = randomize(CbamModule(64))
    compare("cbam", ref, image(64), channels=64)


@pytest.mark.parametrize("kwargs", [{}, {"out_channels": 48, "stride": 2}])
def test_selective_kernel(kwargs):
    ref = randomize(timm_layers.SelectiveKernel(32, **kwargs))
    compare("sk", ref, image(32, 10, 12), channels=32, **kwargs)


@pytest.mark.parametrize("kwargs", [{"radix": 2, "groups": 1}, {"radix": 2, "groups": 2},
                                    {"radix": 1, "groups": 1}])
def test_split_attention(kwargs):
    ref = randomize(timm_layers.SplitAttn(64, norm_layer=tnn.BatchNorm2d, **kwargs))
    compare("splat", ref, image(64), channels=64, **kwargs)


def test_split_attention_without_norm():
    ref = randomize(timm_layers.SplitAttn(32, radix=2))
    compare("splat", ref, image(32), channels=32, norm=False)


@pytest.mark.parametrize("kwargs", [{}, {"fuse_add": True, "fuse_scale": False},
                                    {"fuse_add": True, "use_attn": False}])
def test_global_context(kwargs):
    ref = randomize(timm_layers.GlobalContext(64, **kwargs))
    compare("gc", ref, image(64), channels=64, **kwargs)


@pytest.mark.parametrize("has_skip", [False, True])
def test_coord_attention(has_skip):
    ref = randomize(CoordAttn(64, has_skip=has_skip))
    compare("coord", ref, image(64, 7, 13), channels=64, has_skip=has_skip)


# -- references written from the official code --------------------------------------------------


class DanetPAM(tnn.Module):
    """The official DANet PAM_Module forward."""

    def __init__(self, c):
        super().__init__()
        self.query_conv = tnn.Conv2d(c, c // 8, 1)
        self.key_conv = tnn.Conv2d(c, c // 8, 1)
        self.value_conv = tnn.Conv2d(c, c, 1)
        self.gamma = tnn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = self.query_conv(x).view(b, -1, h * w).permute(0, 2, 1)
        k = self.key_conv(x).view(b, -1, h * w)
        attention = torch.softmax(torch.bmm(q, k), dim=-1)
        v = self.value_conv(x).view(b, -1, h * w)
        out = torch.bmm(v, attention.permute(0, 2, 1)).view(b, c, h, w)
        return self.gamma * out + x


class DanetCAM(tnn.Module):
    """The official DANet CAM_Module forward (softmax of max(energy) - energy)."""

    def __init__(self):
        super().__init__()
        self.gamma = tnn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, c, h, w = x.shape
        q = x.view(b, c, -1)
        energy = torch.bmm(q, q.permute(0, 2, 1))
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(torch.softmax(energy_new, dim=-1), q).view(b, c, h, w)
        return self.gamma * out + x


class Scale(tnn.Module):
    def __init__(self):
        super().__init__()
        self.scale = tnn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x * self.scale


class MmcvCrissCross(tnn.Module):
    """mmcv's pure-PyTorch CrissCrossAttention forward (-inf on the repeated centre)."""

    def __init__(self, c):
        super().__init__()
        self.query_conv = tnn.Conv2d(c, c // 8, 1)
        self.key_conv = tnn.Conv2d(c, c // 8, 1)
        self.value_conv = tnn.Conv2d(c, c, 1)
        self.gamma = Scale()

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.query_conv(x), self.key_conv(x), self.value_conv(x)
        neg_inf_diag = torch.diag(torch.full((h,), float("-inf")))
        energy_h = torch.einsum("bchw,bciw->bwhi", q, k) + neg_inf_diag
        energy_h = energy_h.transpose(1, 2)
        energy_w = torch.einsum("bchw,bchj->bhwj", q, k)
        attn = torch.softmax(torch.cat([energy_h, energy_w], dim=-1), dim=-1)
        out = torch.einsum("bciw,bhwi->bchw", v, attn[..., :h])
        out = out + torch.einsum("bchj,bhwj->bchw", v, attn[..., h:])
        return self.gamma(out) + x


class ConvModule(tnn.Module):
    def __init__(self, cin, cout, norm=False, bias=True):
        super().__init__()
        self.conv = tnn.Conv2d(cin, cout, 1, bias=bias and not norm)
        if norm:
            self.bn = tnn.BatchNorm2d(cout)
        self.norm = norm

    def forward(self, x):
        x = self.conv(x)
        return self.bn(x) if self.norm else x


class MmcvNonLocal(tnn.Module):
    """mmcv's NonLocal2d forward for the embedded-Gaussian / Gaussian / dot-product modes."""

    def __init__(self, c, mode, reduction=2, use_scale=True, norm=False, sub_sample=False):
        super().__init__()
        self.inter, self.mode, self.use_scale, self.sub_sample = max(c // reduction, 1), mode, \
            use_scale, sub_sample
        self.g = ConvModule(c, self.inter)
        self.conv_out = ConvModule(self.inter, c, norm=norm)
        if mode != "gaussian":
            self.theta = ConvModule(c, self.inter)
            self.phi = ConvModule(c, self.inter)
        if mode == "concatenation":
            self.concat_project = tnn.Sequential()
            self.concat_project.add_module("conv", tnn.Conv2d(2 * self.inter, 1, 1, bias=False))

    def forward(self, x):
        n, c = x.shape[:2]
        pool = (lambda t: F.max_pool2d(t, 2)) if self.sub_sample else (lambda t: t)
        g_x = pool(self.g(x)).view(n, self.inter, -1).permute(0, 2, 1)
        if self.mode == "gaussian":
            theta_x = x.view(n, c, -1).permute(0, 2, 1)
            phi_x = pool(x).view(n, c, -1)
        else:
            theta_x = self.theta(x).view(n, self.inter, -1).permute(0, 2, 1)
            phi_x = pool(self.phi(x)).view(n, self.inter, -1)
        if self.mode == "concatenation":
            hq, hk = theta_x.shape[1], phi_x.shape[2]
            t = theta_x.permute(0, 2, 1).unsqueeze(3).expand(-1, -1, -1, hk)
            p = phi_x.unsqueeze(2).expand(-1, -1, hq, -1)
            pair = F.relu(self.concat_project(torch.cat([t, p], dim=1))).squeeze(1) / hk
        else:
            pair = torch.matmul(theta_x, phi_x)
            if self.mode == "embedded_gaussian":
                if self.use_scale:
                    pair = pair / theta_x.shape[-1] ** 0.5
                pair = pair.softmax(dim=-1)
            elif self.mode == "gaussian":
                pair = pair.softmax(dim=-1)
            else:
                pair = pair / pair.shape[-1]
        y = torch.matmul(pair, g_x).permute(0, 2, 1).reshape(n, self.inter, *x.shape[2:])
        return x + self.conv_out(y)


class OfficialPSA(tnn.Module):
    """The official DeLightCMU/PSA PSA_p / PSA_s forward (inplanes == planes)."""

    def __init__(self, c, sequential=False):
        super().__init__()
        ic = c // 2
        self.sequential = sequential
        self.conv_q_right = tnn.Conv2d(c, 1, 1, bias=False)
        self.conv_v_right = tnn.Conv2d(c, ic, 1, bias=False)
        self.conv_up = tnn.Conv2d(ic, c, 1, bias=False)
        self.conv_q_left = tnn.Conv2d(c, ic, 1, bias=False)
        self.conv_v_left = tnn.Conv2d(c, ic, 1, bias=False)

    def spatial_pool(self, x):  # the channel-only branch, in the official naming
        v = self.conv_v_right(x)
        b, ic, h, w = v.shape
        mask = torch.softmax(self.conv_q_right(x).view(b, 1, h * w), dim=2)
        context = torch.matmul(v.view(b, ic, h * w), mask.transpose(1, 2)).unsqueeze(-1)
        return x * torch.sigmoid(self.conv_up(context))

    def channel_pool(self, x):  # the spatial-only branch
        g = self.conv_q_left(x)
        b, ic, h, w = g.shape
        avg = F.adaptive_avg_pool2d(g, 1).view(b, ic, 1).permute(0, 2, 1)
        theta = self.conv_v_left(x).view(b, ic, h * w)
        context = torch.softmax(torch.matmul(avg, theta), dim=2).view(b, 1, h, w)
        return x * torch.sigmoid(context)

    def forward(self, x):
        if self.sequential:
            return self.channel_pool(self.spatial_pool(x))
        return self.spatial_pool(x) + self.channel_pool(x)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_position_attention(memory_efficient):
    ref = randomize(DanetPAM(64))
    kw = dict(memory_efficient=memory_efficient, query_chunk_size=16, key_chunk_size=32)
    compare("pam", ref, image(64, 9, 11), channels=64, **kw)


def test_channel_attention():
    ref = randomize(DanetCAM())
    compare("cam", ref, image(16, 6, 7) * 0.3, channels=16)


@pytest.mark.parametrize("recurrence", [1, 2])
def test_criss_cross(recurrence):
    ref = randomize(MmcvCrissCross(32))

    class Recurrent(tnn.Module):
        def __init__(self):
            super().__init__()
            self.cca = ref

        def forward(self, x):
            for _ in range(recurrence):
                x = self.cca(x)
            return x

    x = image(32, 7, 9)
    want = reference(Recurrent(), x)
    variables = block_from_torch("cca", ref.state_dict(), channels=32, recurrence=recurrence)
    got = blocks.create("cca", channels=32, recurrence=recurrence).apply(
        variables, x.transpose(0, 2, 3, 1)
    )
    err = np.abs(np.asarray(got).transpose(0, 3, 1, 2) - want).max() / np.abs(want).max()
    assert err <= TOL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "embedded_gaussian"},
        {"mode": "embedded_gaussian", "use_scale": False, "sub_sample": True},
        {"mode": "gaussian"},
        {"mode": "dot_product", "norm": True},
        {"mode": "concatenation"},
        {"mode": "embedded_gaussian", "memory_efficient": True},
        {"mode": "dot_product", "memory_efficient": True},
    ],
)
def test_non_local(kwargs):
    torch_kw = {k: v for k, v in kwargs.items() if k != "memory_efficient"}
    ref = randomize(MmcvNonLocal(32, **torch_kw))
    compare("non_local", ref, image(32, 8, 10) * 0.5, channels=32, **kwargs)


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_polarized(mode):
    ref = randomize(OfficialPSA(32, mode == "sequential"))
    compare("polarized", ref, image(32, 8, 10), channels=32, mode=mode)


# -- conversion errors --------------------------------------------------------------------------


def test_conversion_lists_missing_unexpected_and_misshaped_keys():
    sd = dict(timm_layers.SEModule(64).state_dict())
    sd.pop("fc2.bias")
    sd["extra.weight"] = torch.zeros(3)
    sd["fc1.weight"] = torch.zeros(5, 64, 1, 1)
    with pytest.raises(ConversionError) as err:
        block_from_torch("se", sd, channels=64)
    msg = str(err.value)
    assert "missing (2): params/fc1/kernel, params/fc2/bias" in msg
    assert "unexpected (1): extra.weight" in msg
    assert "fc1.weight: (5, 64, 1, 1)" in msg


def test_conversion_accepts_numpy_state_dict():
    ref = randomize(timm_layers.EcaModule(64))
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    variables = block_from_torch("eca", sd, channels=64)
    np.testing.assert_array_equal(
        variables["params"]["conv"]["kernel"][:, 0, 0], sd["conv.weight"][0, 0]
    )
