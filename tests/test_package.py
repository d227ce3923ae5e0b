"""Package-level promises: what `import attnzoo` gives and what it does not pull in."""

import subprocess
import sys


def test_import_needs_neither_tensorflow_nor_torch():
    code = (
        "import sys, attnzoo; "
        "print(sorted(m for m in ('tensorflow', 'torch', 'timm') if m in sys.modules)); "
        "print(len(attnzoo.blocks.list_blocks()), len(attnzoo.backbones.list_backbones()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "[]", f"import attnzoo imported {lines[0]}"
    n_blocks, n_backbones = map(int, lines[1].split())
    assert n_blocks >= 21 and n_backbones >= 20


def test_convert_command_help():
    out = subprocess.run([sys.executable, "-m", "attnzoo.convert", "--help"], capture_output=True,
                         text=True, check=True)
    assert "--source" in out.stdout and "timm:resnet50d" in out.stdout


def test_ops_layer_does_not_import_flax():
    """attnzoo.ops is pure jax.numpy: load it without the package __init__ (which imports blocks)."""
    import attnzoo

    pkg_dir = attnzoo.__path__[0]
    code = (
        "import sys, types; "
        f"pkg = types.ModuleType('attnzoo'); pkg.__path__ = [{pkg_dir!r}]; "
        "sys.modules['attnzoo'] = pkg; "
        "import attnzoo.ops; print('flax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
