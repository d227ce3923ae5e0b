"""Polarized self-attention (Liu et al., 2021) in the FCN head: ``psa.py:r50,parallel`` (default)
or ``psa.py:r50,sequential`` (models ``psa_*`` and ``psas_*``).

    python train.py --config configs/psa.py:r101,cityscapes --workdir runs/psa_r101_cityscapes

Argument: ``depth`` (r50 | r18 | r101), ``stride`` (d8 | d16), ``dataset``
(cityscapes | cityscapes769 | ade20k) and ``layout`` (parallel | sequential),
comma-separated; the schedule is mmsegmentation's (``configs/common.py``).
"""

from configs import common


def get_config(arg: str = ""):
    a = common.parse_arg(arg, depth=common.DEPTHS, stride=common.STRIDES,
                         dataset=tuple(common.DATASETS), layout=("parallel", "sequential"))
    family = "psa" if a.layout == "parallel" else "psas"
    return common.mmseg_schedule(a.dataset, f"{family}_{a.depth}_{a.stride}")
