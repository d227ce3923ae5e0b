"""The benchmark scripts: the PyTorch DANet they compare against computes what attnzoo's does,
and the scripts run end to end (tiny sizes; their real tables are in docs/benchmarks.md)."""

import collections
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from common import cpu_description  # noqa: E402
from torch_danet import TorchDANet, loss, randomize  # noqa: E402

from attnzoo import losses, models  # noqa: E402
from attnzoo.convert import convert_state_dict, target_shapes  # noqa: E402

TOL = 1e-4  # max |attnzoo - PyTorch float64| / max |PyTorch|, as the backbone parity tests


def converted(seed=0):
    torch.manual_seed(seed)
    reference = randomize(TorchDANet(num_classes=7), seed).eval()
    model = models.create("danet_r50_d8", num_classes=7)
    target = target_shapes(model, np.zeros((1, 64, 64, 3), np.float32))
    return reference, model, convert_state_dict(reference.state_dict(), target)


@pytest.mark.slow  # the benchmark's own reference (5 s)
def test_torch_danet_matches_attnzoo_danet_r50_d8():
    reference, model, variables = converted()
    assert reference.head.pam.gamma.item() != 0 and reference.head.cam.gamma.item() != 0
    x = np.random.default_rng(0).standard_normal((2, 64, 96, 3)).astype(np.float32)
    got = np.asarray(jax.jit(lambda v, x: model.apply(v, x)["out"])(variables, x))
    with torch.no_grad():
        want = reference.double()(torch.from_numpy(x.transpose(0, 3, 1, 2)).double())["out"]
    want = want.numpy().transpose(0, 2, 3, 1)
    assert got.shape == want.shape == (2, 64, 96, 7)
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err <= TOL, f"max relative error {err:.2e} > {TOL:.0e}"


def test_torch_danet_loss_is_the_recipe_loss():
    """The PyTorch benchmark trains on the same weighted terms as attnzoo's loss_terms."""
    _, model, _ = converted()
    rng = np.random.default_rng(1)
    logits = {k: rng.standard_normal((2, 8, 8, 7)).astype(np.float32)
              for k in ("out", "pam", "cam", "aux")}
    labels = rng.integers(0, 7, (2, 8, 8)).astype(np.int32)
    labels[0, :3] = 255
    want, _ = losses.combined_loss(logits, labels, model.loss_terms(), ignore_index=255)
    got = loss({k: torch.from_numpy(v.transpose(0, 3, 1, 2)) for k, v in logits.items()},
               torch.from_numpy(labels).long())
    np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def run(script, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("flags, expected", [
    ("fpu sse2 avx2 fma", "AMD EPYC (avx2, no avx512f)"),
    ("avx2 avx512f avx512bw", "AMD EPYC (avx512f, no avx512_bf16)"),
    ("avx2 avx512f avx512_bf16", "AMD EPYC (avx512_bf16)"),
    ("sse2", "AMD EPYC"),
])
def test_machine_names_the_widest_vector_extension(flags, expected):
    cpuinfo = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert cpu_description(cpuinfo) == expected


@pytest.mark.slow
def test_flops_script():
    out = run("flops.py", "--models", "danet_r18_d8", "--size", "64x64", "--mfu-model",
              "danet_r18_d8", "--mfu-size", "64x64", "--matmul-size", "256", "--repeats", "1")
    row = next(line for line in out.splitlines() if line.startswith("| danet_r18_d8"))
    assert float(row.split("|")[-2]) > 0.5  # GFLOPs of a 64x64 forward pass
    assert "fraction of peak" in out


@pytest.mark.slow
def test_whole_image_script_dense_equals_bounded():
    out = run("whole_image.py", "--sizes", "64x128", "--model", "danet_r18_d8")
    rows = [line for line in out.splitlines() if line.startswith("| 64x128")]
    assert [r.split("|")[3].strip() for r in rows] == ["dense", "bounded"]
    assert float(rows[0].split("|")[-2].split()[0]) <= 1e-5


@pytest.mark.slow
def test_quickstart_scripts(context_shapes_dir, tmp_path):
    """quickstart_heads.py trains and tabulates a head (here 2 steps, one seed, 8 simulated
    devices: the workdir is named after them) and quickstart_profile.py times the step."""
    out = run("quickstart_heads.py", "--workdir", str(tmp_path), "--heads", "fcn", "--seeds", "3",
              "--num-steps", "2", "--data-dir", str(context_shapes_dir), "--devices", "8")
    assert (tmp_path / "fcn_s3_xla_force_host_platform_device_count-8" / "checkpoints").is_dir()
    row = next(line for line in out.splitlines() if line.startswith("| fcn_r18_d8"))
    miou, shapes, per_seed, _, reads = (c.strip() for c in row.split("|")[2:7])
    mean, std = (float(v) for v in miou.split(" +- "))
    assert std == 0.0 and abs(float(per_seed.split(",")[0]) - mean) <= 0.051  # one seed
    shape_iou = float(shapes.split(" +- ")[0])
    assert 0 <= shape_iou <= 100 and reads == f"{int(shape_iou > 50)} of 1"
    assert "XLA_FLAGS --xla_force_host_platform_device_count=8" in out and "8 x cpu" in out
    out = run("quickstart_profile.py", "--steps", "2", "--data-dir", str(context_shapes_dir))
    shares = [line for line in out.splitlines() if line.startswith("| input's share")]
    assert len(shares) == 1 and shares[0].split("|")[2].strip().endswith("%")


@pytest.mark.slow
def test_compare_torch_script(tmp_path):
    """End to end at 64x64: parity line, both frameworks' matmul rates, one inference row per
    set of XLA options (XLA's defaults and oneDNN's thunks)."""
    done = subprocess.run(
        [sys.executable, str(BENCH / "compare_torch.py"), "--sizes", "64x64", "--batches", "1",
         "--modes", "infer", "--repeats", "1", "--matmul-size", "128", "--xla-flags=",
         "--xla-flags=--xla_cpu_use_onednn=true"],
        capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    parity = next(line for line in lines if line.startswith("parity"))
    assert float(parity.split("= ")[-1]) < TOL
    rates = next(line for line in lines if line.startswith("128x128 matmul GFLOP/s"))
    for name in ("jax float32", "torch float32", "jax bfloat16", "torch bfloat16"):
        assert float(rates.split(name + " ")[1].split(";")[0]) > 0
    rows = [line for line in lines if line.startswith("| infer | 64x64 | 1 |")]
    assert [row.split("|")[4].strip() for row in rows] == ["-", "`--xla_cpu_use_onednn=true`"]
    assert all(float(row.split("|")[7]) > 0 for row in rows)  # attnzoo / PyTorch


@pytest.mark.slow
def test_step_profile_sorts_a_compiled_programs_instructions_by_kind():
    from step_profile import KINDS, instruction_kinds

    def fn(x, kernel, w):
        y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        z = jax.nn.relu(y).reshape(-1, 8) @ w
        return z - z.mean(axis=0)

    args = (np.ones((1, 16, 16, 4), np.float32), np.ones((3, 3, 4, 8), np.float32),
            np.ones((8, 32), np.float32))
    kinds = instruction_kinds(jax.jit(fn).lower(*args).compile().as_text())
    found = {kind for kind, _ in kinds.values()}
    assert {"convolution", "matrix product"} <= found
    assert found <= set(KINDS)


def test_product_bound_counts_every_product_the_step_runs():
    """Products inside jitted calls, custom gradients and a scan's body (times its length) are
    counted; equal ones share a key; timing one alone gives its FLOPs; a while loop is refused."""
    from product_bound import describe, products, time_alone

    @jax.custom_vjp
    def double_dot(x, w):
        return x @ w

    double_dot.defvjp(lambda x, w: (x @ w, (x, w)),
                      lambda res, g: (g @ res[1].T, res[0].T @ g))

    def fn(x, w, k):
        y = jax.jit(lambda a: a @ w)(x) + double_dot(x, w)  # two equal forward dots
        y = jax.lax.scan(lambda c, _: (c @ w, None), y, None, length=3)[0]
        z = jax.lax.conv_general_dilated(y.reshape(1, 4, 8, 8), k, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return z.sum()

    x, w = np.ones((32, 8), np.float32), np.ones((8, 8), np.float32)
    k = np.ones((3, 3, 8, 4), np.float32)
    found = products(jax.make_jaxpr(jax.grad(fn, argnums=(1, 2)))(x, w, k).jaxpr)
    counts = collections.Counter()
    for eqn, n in found.values():
        counts[describe(eqn)] += n
    assert counts["conv float32[1, 4, 8, 8] x float32[3, 3, 8, 4]"] == 1
    # forward: the jit's, the custom rule's, the scan's 3; backward: the custom rule's g @ w.T
    # and the scan's 3 x dc (g @ w^T, a transposed operand: another key, the same shapes)
    assert counts["dot float32[32, 8] x float32[8, 8]"] == 1 + 1 + 3 + 1 + 3
    # all: forward 6 (with the conv); backward: the scan's 3 x (dc, dw), the jit's dw (x is
    # not differentiated), the custom rule's two, the conv's dx and dK
    assert sum(counts.values()) == 6 + 3 * 2 + 1 + 2 + 2
    seconds, flops = time_alone(next(iter(found.values()))[0], repeats=1)
    assert seconds > 0 and flops > 0
    with pytest.raises(ValueError, match="while loop"):
        loop = jax.make_jaxpr(lambda a: jax.lax.while_loop(lambda c: c.sum() < 9, lambda c: c @ w, a))
        products(loop(x).jaxpr)


@pytest.mark.exhaustive  # 85 s here
def test_product_bound_script():
    """End to end at 64x64: the train step's products, count and time, the heaviest one, both
    steps and the float32 target (0.67x PyTorch's step)."""
    out = run("product_bound.py", "--size", "64x64", "--repeats", "1", "--top", "1")
    summary = next(line for line in out.splitlines() if "products (" in line)
    assert int(summary.split()[0]) > 300  # DANet-R50-D8's step: forward and both gradients
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in out.splitlines()
            if line.startswith("| ")}
    torch_s = float(rows["PyTorch eager"][0])
    assert float(rows["target (0.67x PyTorch)"][0]) == pytest.approx(0.67 * torch_s, abs=2e-3)
    assert float(rows["attnzoo's products alone"][0]) > 0 and float(rows["attnzoo"][0]) > 0
    assert "products alone" in out.splitlines()[-1]


def test_big_models_variants_and_batches():
    from big_models import largest_batch, parse_variant

    assert parse_variant("plain") == {}
    assert parse_variant("scan,transformer=nothing,head=dots") == {
        "model.scan_layers": True, "model.remat.transformer": "nothing",
        "model.remat.head": "dots"}
    assert parse_variant("fsdp=8,transformer=dots") == {"mesh.fsdp": 8,
                                                        "model.remat.transformer": "dots"}
    for bad in ("transformer", "fsdp=0", "fsdp=dots"):
        with pytest.raises(SystemExit, match=f"{bad!r} is not 'plain'"):
            parse_variant(bad)
    # peaks measured at 1, 2, 4, 8 images: interpolated between the sizes around the capacity
    peaks = {1: 5e9, 2: 6e9, 4: 8e9, 8: 16e9}
    assert [largest_batch(peaks, c) for c in (4e9, 5.5e9, 8e9, 12e9, 16e9, 20e9)] == \
        [0, 1, 4, 6, 8, 8]


@pytest.mark.exhaustive  # 80 s here: three variants compiled at two batch sizes each
def test_big_models_script():
    out = subprocess.run([sys.executable, str(BENCH / "big_models.py"), "--models",
                          "segmenter_vit_t_mask", "--variants", "plain;transformer=nothing;fsdp=4",
                          "--size", "64", "--capacities", "1", "--max-batch", "2"],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split(" | ") for line in out.splitlines() if line.startswith("| segmenter")]
    assert [r[1] for r in rows] == ["plain", "transformer=nothing", "fsdp=4"]
    (total, held, _, plain), (_, _, _, rematted), (sharded_total, sharded_held, _, sharded) = (
        map(float, r[2:6]) for r in rows)  # parameters, per device; peak GiB with 1, 2 images
    assert all(r[6] == "0" or int(r[6]) >= 1 for r in rows)  # largest batch for 1 GB
    # a 64x64 ViT-T's peak is its parameters and optimizer state (0.09 GiB either way); what
    # remat saves is measured on the big models (docs/benchmarks.md, test_remat.py)
    assert 0 < rematted <= plain
    # fsdp=4: the kernels of >= 2 ** 16 entries (most of the parameters) held in quarters, and
    # so their Adam moments (GiB to 2 decimals: 0.02 of parameters; peak 0.07 vs 0.09 here)
    assert sharded_total == total == held and sharded_held < total
    assert sharded < plain
