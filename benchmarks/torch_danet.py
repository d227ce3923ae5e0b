"""DANet-R50-D8 in PyTorch eager, laid out as mmsegmentation's ``DAHead`` + ``FCNHead``, for the
speed comparison with attnzoo (``compare_torch.py``) and its parity test.

The backbone is timm's ``resnet50c`` (deep stem, as mmsegmentation's ResNetV1c) at output
stride 8. The head follows the DANet paper (Fu et al., CVPR 2019) and the official code:

* position attention: ``S = softmax_i(q_j . k_i)`` over the ``N = HW`` positions,
  ``E_j = alpha sum_i S_ji v_i + x_j`` (q/k width C/8, no scaling);
* channel attention: ``X = x`` as ``C x N``, ``A = softmax(max(XX^T) - XX^T)``,
  ``E = beta A X + x``;
* each branch: 3x3 conv-BN-ReLU, attention, 3x3 conv-BN-ReLU; the sum goes to the main
  classifier (Dropout2d 0.1, 1x1 conv); in training each branch has its own classifier and an
  FCN auxiliary head on stage 3 adds ``0.4`` of its loss.

Submodules carry attnzoo's names, so ``attnzoo.convert.convert_state_dict`` maps this model's
``state_dict()`` onto ``models.create("danet_r50_d8")`` with no renames.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """3x3 (or 1x1) conv without bias, BatchNorm, ReLU (mmcv's ``ConvModule``)."""

    def __init__(self, cin: int, cout: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class PositionAttention(nn.Module):
    def __init__(self, channels: int, key_channels: int):
        super().__init__()
        self.query_conv = nn.Conv2d(channels, key_channels, 1)
        self.key_conv = nn.Conv2d(channels, key_channels, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query_conv(x).flatten(2).transpose(1, 2)  # (B, N, d)
        k = self.key_conv(x).flatten(2)  # (B, d, N)
        weights = torch.softmax(torch.bmm(q, k), dim=-1)  # (B, N queries, N keys)
        v = self.value_conv(x).flatten(2)  # (B, C, N)
        out = torch.bmm(v, weights.transpose(1, 2)).view(b, c, h, w)
        return self.gamma * out + x


class ChannelAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.flatten(2)  # (B, C, N)
        energy = torch.bmm(flat, flat.transpose(1, 2))
        weights = torch.softmax(energy.amax(-1, keepdim=True) - energy, dim=-1)
        return self.gamma * torch.bmm(weights, flat).view(b, c, h, w) + x


class Classifier(nn.Module):
    def __init__(self, cin: int, num_classes: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(cin, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class DANetHead(nn.Module):
    def __init__(self, cin: int, channels: int, num_classes: int):
        super().__init__()
        self.pam_in_conv = ConvModule(cin, channels)
        self.pam = PositionAttention(channels, channels // 8)
        self.pam_out_conv = ConvModule(channels, channels)
        self.cam_in_conv = ConvModule(cin, channels)
        self.cam = ChannelAttention()
        self.cam_out_conv = ConvModule(channels, channels)
        self.cls = Classifier(channels, num_classes)
        self.pam_cls = Classifier(channels, num_classes)
        self.cam_cls = Classifier(channels, num_classes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        c = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        out = {"out": self.cls(p + c)}
        if self.training:
            out["pam"] = self.pam_cls(p)
            out["cam"] = self.cam_cls(c)
        return out


class AuxHead(nn.Module):
    """mmsegmentation's auxiliary ``FCNHead`` (one conv, no concatenation)."""

    def __init__(self, cin: int, channels: int, num_classes: int):
        super().__init__()
        self.convs_0 = ConvModule(cin, channels)
        self.cls = Classifier(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(self.convs_0(x))


class TorchDANet(nn.Module):
    """DANet-R50-D8: ``forward(images NCHW)`` -> dict of logits at the input size
    (``"out"``; in training also ``"pam"``, ``"cam"`` and ``"aux"``)."""

    def __init__(self, num_classes: int = 19, channels: int = 512, aux_channels: int = 256):
        super().__init__()
        self.backbone = timm.create_model("resnet50c", pretrained=False, output_stride=8,
                                          features_only=True, out_indices=(3, 4))
        self.head = DANetHead(2048, channels, num_classes)
        self.aux_head = AuxHead(1024, aux_channels, num_classes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        c3, c4 = self.backbone(images)
        outputs = self.head(c4)
        if self.training:
            outputs["aux"] = self.aux_head(c3)
        size = images.shape[-2:]
        return {k: F.interpolate(v, size=size, mode="bilinear", align_corners=False)
                for k, v in outputs.items()}


LOSS_WEIGHTS = {"out": 1.0, "pam": 1.0, "cam": 1.0, "aux": 0.4}


def loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """The recipe's loss: cross-entropy (ignore 255) on each output, weighted as attnzoo's."""
    return sum(w * F.cross_entropy(outputs[k], labels, ignore_index=255)
               for k, w in LOSS_WEIGHTS.items())


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics/affines and attention gammas (0 at init would hide the
    attention branches from a parity check)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            if isinstance(m, (PositionAttention, ChannelAttention)):
                m.gamma.copy_(torch.rand(1, generator=g) * 0.5 + 0.25)
    return model

