"""Pure attention functions (jax.numpy only: no parameters, no state, no Flax), and the
convolutions the blocks build on (:func:`conv2d`, the 1x1 :func:`pointwise` and
:func:`depthwise_conv2d`, computed as :func:`conv_implementation` says: ``attnzoo.ops.conv``).

Layout is NHWC. Softmaxes run in float32 whatever the input dtype. Where an
``N x N`` map can be large, a ``memory_efficient=True`` path computes the same
result exactly without forming it.
"""

from attnzoo.ops.channel import channel_attention, channel_attention_map
from attnzoo.ops.conv import (
    conv2d,
    conv_implementation,
    depthwise_conv2d,
    pointwise,
    resolve_implementation,
)
from attnzoo.ops.crf import (
    DEEPLAB_CRF,
    CRFParams,
    Lattice,
    crf_features,
    dense_crf,
    gaussian_filter,
    gaussian_filter_dense,
    lattice_filter,
    mean_field,
    permutohedral_lattice,
    potts,
    table_sizes,
)
from attnzoo.ops.criss_cross import criss_cross_attention, criss_cross_weights
from attnzoo.ops.deformable import (
    multi_scale_deformable_attention,
    sample_label_masks,
    sample_labels,
    sample_points,
)
from attnzoo.ops.dot_product import (
    attend,
    attention_scores,
    chunked_dot_product_attention,
    dot_product_attention,
    map_query_chunks,
    masked_attention,
)
from attnzoo.ops.dynamic import dynamic_depthwise_conv
from attnzoo.ops.em import em_attention
from attnzoo.ops.encoding import context_encoding
from attnzoo.ops.hard import hard_attention, hard_attention_weights
from attnzoo.ops.interlaced import interlaced_sparse_attention
from attnzoo.ops.matching import linear_sum_assignment
from attnzoo.ops.non_local import (
    disentangled_non_local_attention,
    non_local_attention,
    non_local_concatenation,
)
from attnzoo.ops.object_context import spatial_gather
from attnzoo.ops.polarized import polarized_channel_context, polarized_spatial_weights
from attnzoo.ops.position import position_attention, position_attention_map
from attnzoo.ops.psanet import point_wise_spatial_attention, psa_mask
from attnzoo.ops.resize import (
    adaptive_avg_pool,
    interpolate,
    interpolate_axis,
    linear_taps,
    nearest_index,
    rescale_bilinear,
    resize_bicubic,
    resize_bilinear,
    resize_nearest,
)
from attnzoo.ops.temporal import temporal_attention
from attnzoo.ops.window import (
    relative_position_index,
    shifted_window_mask,
    window_attention,
    window_merge,
    window_partition,
)

__all__ = [
    "CRFParams",
    "DEEPLAB_CRF",
    "Lattice",
    "adaptive_avg_pool",
    "attend",
    "attention_scores",
    "channel_attention",
    "channel_attention_map",
    "chunked_dot_product_attention",
    "context_encoding",
    "conv2d",
    "conv_implementation",
    "crf_features",
    "criss_cross_attention",
    "criss_cross_weights",
    "dense_crf",
    "depthwise_conv2d",
    "disentangled_non_local_attention",
    "dot_product_attention",
    "dynamic_depthwise_conv",
    "em_attention",
    "gaussian_filter",
    "gaussian_filter_dense",
    "hard_attention",
    "hard_attention_weights",
    "interlaced_sparse_attention",
    "interpolate",
    "interpolate_axis",
    "lattice_filter",
    "linear_sum_assignment",
    "linear_taps",
    "map_query_chunks",
    "masked_attention",
    "mean_field",
    "multi_scale_deformable_attention",
    "nearest_index",
    "non_local_attention",
    "non_local_concatenation",
    "permutohedral_lattice",
    "point_wise_spatial_attention",
    "pointwise",
    "polarized_channel_context",
    "polarized_spatial_weights",
    "position_attention",
    "position_attention_map",
    "potts",
    "psa_mask",
    "relative_position_index",
    "rescale_bilinear",
    "resize_bicubic",
    "resize_bilinear",
    "resize_nearest",
    "resolve_implementation",
    "sample_label_masks",
    "sample_labels",
    "sample_points",
    "shifted_window_mask",
    "spatial_gather",
    "table_sizes",
    "temporal_attention",
    "window_attention",
    "window_merge",
    "window_partition",
]


def __dir__() -> list[str]:
    """The public names (``__all__``), not the submodules: what tab completion offers."""
    return sorted(__all__)
