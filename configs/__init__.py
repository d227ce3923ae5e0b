"""Training recipes: one ``get_config(arg)`` per file, shared parts in ``common.py``.

``python train.py --config configs/mmseg.py:danet_r101_d8,cityscapes`` (train.py's
folder, the repository root, is on ``sys.path``, so recipes import
``configs.common``).
"""
