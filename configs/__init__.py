"""Training recipes: one ``get_config(arg)`` per file, shared parts in ``common.py``.

``python train.py --config configs/danet.py:r101,cityscapes`` (train.py's
folder, the repository root, is on ``sys.path``, so recipes import
``configs.common``).
"""
