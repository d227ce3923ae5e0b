"""What every decode head shares: the classifier, the fields, the input check, the registry, and
the family record each head's module declares.

A head maps backbone features ``(B, h, w, C)`` to class logits at the feature
resolution and returns a dict: ``{"out": logits}``, plus, in training, the
outputs its :attr:`DecodeHead.branches` declare (DANet's ``"pam"``, ``"cam"``),
each with its loss weight. Convolutions are 3x3 conv + BN + ReLU
(``ConvNormAct``); the classifier is channel dropout (0.1, as the references)
and a 1x1 conv with bias (mmsegmentation's ``BaseDecodeHead.cls_seg``).

A head *family* (:class:`Family`) is everything particular to one head, declared in the head's
module beside it: the models it is registered as, its recipe and quickstart settings and its
mmseg key renames. The rest of attnzoo reads them from :func:`list_families`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from attnzoo._checks import check_positive, check_rank
from attnzoo._registry import Registry, check_module_contract
from attnzoo.blocks.common import ConvNormAct, Dtype, conv

Array = jax.Array


def _check_head(name: str, cls: type[nn.Module]) -> None:
    check_module_contract(f"head {name!r} ({getattr(cls, '__name__', cls)})", cls,
                          ("num_classes", "channels", "dtype", "param_dtype"),
                          "attnzoo.heads.register")


HEADS: Registry[type[nn.Module]] = Registry("head", check=_check_head)


def register(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator registering a decode head as ``name``.

    The contract, checked here (ValueError saying what is missing): a ``flax.linen.Module``
    class (usually a :class:`DecodeHead`) with the fields ``num_classes``, ``channels``,
    ``dtype`` and ``param_dtype``, whose ``__call__(features, *, train=False)`` takes the
    keyword ``train`` and returns ``{"out": logits}`` (plus the :attr:`DecodeHead.branches`'
    outputs in training).
    """
    return HEADS.register(name)


class Classifier(nn.Module):
    """Channel dropout then a 1x1 conv to ``num_classes`` (mmsegmentation's ``cls_seg``).

    The dropout zeroes whole feature maps (PyTorch's ``Dropout2d``, which
    mmsegmentation's decode heads and the official DANet / CCNet heads use),
    not single activations.

    Attributes:
      num_classes: output channels.
      dropout: probability of zeroing a channel in training.
    """

    num_classes: int
    dropout: float = 0.1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        x = nn.Dropout(self.dropout, broadcast_dims=(1, 2), deterministic=not train)(x)
        return conv(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=nn.initializers.normal(0.01), name="conv_seg")(x)


class DecodeHead(nn.Module):
    """Base of the decode heads (mmsegmentation's ``BaseDecodeHead``).

    Subclasses write ``__call__(x, *, train=False) -> dict`` with the helpers
    below and declare extra training outputs in :attr:`branches`.

    Attributes:
      num_classes: classes of the logits.
      channels: width of the head's convolutions.
      dropout: classifier channel dropout.
      align_corners: of the head's bilinear resizing (PSPNet's pyramid), mmseg's flag.
      branches: (class attribute) ``(output name, loss weight)`` of the extra
        logits the head returns in training and at init; the segmentor adds
        them to its loss terms.
      branch_losses: (class attribute) output name -> the :data:`attnzoo.losses.LOSSES` name of
        a branch not scored by the pixel loss (EncNet's ``{"se": "semantic_encoding"}`` on
        image-level logits); the others take the run's pixel loss.
    """

    num_classes: int
    channels: int = 512
    dropout: float = 0.1
    align_corners: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    branches: ClassVar[tuple[tuple[str, float], ...]] = ()
    branch_losses: ClassVar[Mapping[str, str]] = {}

    def __post_init__(self) -> None:
        check_positive(self.num_classes, "num_classes")
        check_positive(self.channels, "channels")
        super().__post_init__()

    @property
    def kw(self) -> dict[str, Any]:
        """``dtype`` and ``param_dtype`` for submodules."""
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def check_input(self, x: Array) -> None:
        """``x`` must be NHWC features."""
        check_rank(x, 4, "features", "B, H, W, C")

    def check_features(self, feats: Sequence[Array], example: tuple[str, ...],
                       exact: bool = True) -> None:
        """``feats`` must be a list of NHWC features, as many as ``example`` names (at least one
        unless ``exact``): the heads that read several backbone stages (``example`` is the
        model's ``in_feature`` that gives them, for the error)."""
        count = len(feats) if isinstance(feats, (list, tuple)) else None
        if count is None or count == 0 or (exact and count != len(example)):
            got = type(feats).__name__ if count is None else f"{count} features"
            raise ValueError(
                f"the {type(self).__name__} reads a list of backbone features (the model's "
                f"in_feature must be a tuple such as {example}); got {got}")
        for i, f in enumerate(feats):
            check_rank(f, 4, f"features[{i}]", "B, H, W, C")

    def bottleneck(self, maps: Sequence[Array], train: bool) -> Array:
        """``maps`` concatenated along channels (in the first's dtype) and fused by a 3x3
        conv-BN-ReLU of ``channels`` named ``bottleneck`` (call inside the compact
        ``__call__``): the fusion of PSPNet's, ASPP's, APCNet's and DMNet's pyramids."""
        return self.conv_block(3, "bottleneck")(
            jnp.concatenate([m.astype(maps[0].dtype) for m in maps], -1), train=train)

    def conv_block(self, kernel_size: int, name: str, **kwargs: Any) -> ConvNormAct:
        """A conv-BN-ReLU of ``channels`` (call inside the compact ``__call__``)."""
        return ConvNormAct(self.channels, kernel_size, name=name, **kwargs, **self.kw)

    def classifier(self, name: str = "cls") -> Classifier:
        """A :class:`Classifier` (call inside the compact ``__call__``)."""
        return Classifier(self.num_classes, self.dropout, name=name, **self.kw)


def create(name: str, /, **kwargs: Any) -> nn.Module:
    """Build the head registered as ``name`` (``num_classes=`` required, e.g.
    ``create("danet", num_classes=19, channels=512)``); ValueError naming a keyword that is no
    field of the head (and the nearest field)."""
    return HEADS.build(name, kwargs)


def list_heads(pattern: str = "*", *, describe: bool = False) -> list[str] | dict[str, str]:
    """The registered head names matching ``pattern`` (shell-style), sorted; with ``describe``,
    a dict name -> the first line of the head's docstring."""
    return HEADS.listing(pattern, describe)


@dataclasses.dataclass(frozen=True)
class Family:
    """A decode-head family: what is particular to it, declared in its head's module.

    The models layer registers its models (:attr:`model_sets`), the mmseg converter reads its
    key renames and the head fields mmseg's configs fix, ``configs/mmseg.py`` its recipe and
    ``configs/quickstart.py`` its quickstart settings, the docs its summary. Nothing else lists
    the families: they are :func:`list_families`.

    Attributes:
      name: the family's name; its models are ``<name>_<backbone>`` (``danet_r50_d8``), as
        mmseg's config stems (``danet_r50-d8_4xb2-80k_cityscapes-512x1024``).
      head: the registered head its models use.
      summary: the head and its paper, one line (the generated tables).
      model_sets: the backbones it is registered on, by name of a model set of
        :mod:`attnzoo.models.zoo` (``"resnet"``: ``<name>_r{18,50,101}_d{8,16}``; ``"mit"``:
        ``<name>_mit_b{0..5}``; ``"hrnet"``: ``<name>_hr{18s,18,48}``; ``"resnet_fpn"``:
        ``<name>_r{18,50,101}``, undilated; ``"swin"``: ``<name>_swin_{t,s,b,l}``,
        ``<name>_swin_{b,l}_w12``; ``"vit"``: ``<name>_{vit_b16,deit_s16,deit_b16}[_mln|_ln_mln]``;
        ``"segmenter"``: ``<name>_vit_{t,s,b,l}_mask``, ``<name>_vit_s_fcn``; ``"twins"``:
        ``<name>_{pcpvt,svt}_{s,b,l}``; ``"setr"``: ``<name>_vit_l_{naive,pup,mla}``;
        ``"hybrid"``: ``<name>_r50_vit_b16``); the first is the quickstart's.
      set_head_kwargs: head fields the family sets on a model set's models, by model set: a
        function of the width of the features the head reads (HRNet's heads read the
        concatenation of its four branches, and mmseg sizes them by it).
      recipe: engine config fields its recipe sets beyond mmseg's schedule (dotted names,
        e.g. ``{"optimizer.name": "adamw"}``).
      set_recipe: engine config fields its recipe sets on a model set's models, by model set,
        over the model set's own (mmseg trains Semantic FPN on Twins with AdamW at 1e-4, its
        UPerNets on Transformers at 6e-5 with warm-up); the zoo puts them in each model's
        ``recipe``.
      quickstart: ``config.model`` fields the quickstart sets for it (e.g. PSANet's mask
        size for the quickstart's 16 x 16 features).
      mmseg_renames: ``(pattern, replacement)`` pairs (``re.sub``, in order, each pattern
        anchored with ``^``) for its decode head's mmseg keys without their
        ``decode_head.`` prefix, applied before the renames every head shares; None when
        mmseg publishes no checkpoint of it.
      mmseg_head_kwargs: head fields an mmseg config fixes, by dataset (``"cityscapes"``,
        ``"ade20k"``; ``"*"``: every dataset).
      mmseg_state_dict: a rewrite of the whole mmseg state dict (numpy arrays) for a weight
        laid out otherwise than attnzoo's, applied before the renames; None for none.
      mmseg_fields: engine config fields (dotted names) an mmseg config of the family sets beyond
        its dataset's protocol and the recipes, given the model and the protocol (a dict with
        ``dataset``, ``crop``, ...): Segmenter's and SETR's sliding windows, a per-dataset
        learning rate, ``"model.aux_kwargs"`` (which restore the checkpoint too); None for none.
      mmseg_backbones: how its mmseg config stems write a backbone its models name otherwise
        (MaskFormer's ``r50-d32`` is ``maskformer_r50``, ``swin-t_upernet`` ``maskformer_swin_t``);
        other backbones are read with ``-`` as ``_``.
    """

    name: str
    head: str
    summary: str
    model_sets: tuple[str, ...] = ("resnet",)
    set_head_kwargs: Mapping[str, Callable[[int], Mapping[str, Any]]] = dataclasses.field(
        default_factory=dict)
    set_recipe: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    in_feature: str | tuple[str, ...] = "c4"
    auxiliary: bool = True
    recipe: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    quickstart: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    mmseg_renames: tuple[tuple[str, str], ...] | None = None
    mmseg_head_kwargs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    mmseg_state_dict: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    mmseg_fields: Callable[[str, Mapping[str, Any]], Mapping[str, Any]] | None = None
    mmseg_backbones: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        unanchored = [p for p, _ in self.mmseg_renames or () if not p.startswith("^")]
        if unanchored:
            raise ValueError(f"family {self.name!r}: mmseg_renames patterns must start with '^' "
                             f"(they are scoped to the decode head's keys); got {unanchored}")

    def mmseg_head_fields(self, dataset: str) -> dict[str, Any]:
        """The head fields an mmseg config on ``dataset`` fixes (:attr:`mmseg_head_kwargs`)."""
        return {**self.mmseg_head_kwargs.get("*", {}), **self.mmseg_head_kwargs.get(dataset, {})}


FAMILIES: Registry[Family] = Registry("family", describe=lambda family: family.summary)


def register_family(family: Family) -> Family:
    """Register ``family`` (its head must be registered first)."""
    HEADS.get(family.head)
    return FAMILIES.add(family.name, family)


def get_family(name: str) -> Family:
    """The family registered as ``name``; ValueError listing the families if unknown."""
    return FAMILIES.get(name)


def list_families(pattern: str = "*", *, describe: bool = False
                  ) -> list[str] | dict[str, str]:
    """The registered family names matching ``pattern`` (shell-style), sorted; with
    ``describe``, a dict name -> the family's summary."""
    return FAMILIES.listing(pattern, describe)
