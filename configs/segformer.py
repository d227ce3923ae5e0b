"""SegFormer (Xie et al., NeurIPS 2021; mmsegmentation's ``segformer_mit-b*`` recipes): a Mix
Transformer encoder and the all-MLP decoder.

    python train.py --config configs/segformer.py:b2,ade20k --workdir runs/segformer_b2_ade20k

Argument: ``size`` (b0 .. b5) and ``dataset`` (ade20k: 512x512 crops, batch 16;
cityscapes1024: 1024x1024 crops, batch 8, sliding-window evaluation), comma-separated.
The schedule is the paper's: 160k steps of AdamW (lr 6e-5, betas 0.9/0.999, weight decay
0.01), linear warm-up over 1500 steps, then poly decay (power 1) to 0; the head learns at
10x the rate (mmseg's ``paramwise_cfg``: ``head`` ``lr_mult=10``). Start the encoder from
ImageNet weights with ``--config.init_from`` (a converted checkpoint).
"""

from configs import common

SIZES = ("b0", "b1", "b2", "b3", "b4", "b5")


def get_config(arg: str = ""):
    a = common.parse_arg(arg, size=SIZES, dataset=("ade20k", "cityscapes1024"))
    c = common.mmseg_schedule(a.dataset, f"segformer_mit-{a.size}")
    c.optimizer.update(dict(name="adamw", learning_rate=6e-5, b1=0.9, b2=0.999,
                            weight_decay=0.01, schedule="poly", power=1.0, min_lr=0.0,
                            warmup_steps=1500, lr_mult={"head": 10.0}))
    c.eval_batch_size = 1 if a.dataset == "ade20k" else 8
    return c
