"""The speed switches (SpeedConfig) compute the paper's function: the trainer's default model
against the plain reference (every switch off), switch by switch; layouts; oneDNN's fc layers;
the allocator setting; checkpoints of the grouped default."""
import dataclasses
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from repro import checkpoint
from repro.fast import linear
from repro.config import Config, ModelConfig, SpeedConfig, Widths
from repro.grouped import from_grouped_state
from repro.model import AlexNet
from repro.parallel import OneDevice
from repro.train import build_model
from tests.tolerance import FLOAT32_NET_TOL as TOL
from tests.tolerance import FLOAT64_TOL as TOL64
from tests.tolerance import assert_sums_close, rel_err
PLAIN = SpeedConfig.plain()
SWITCHES = ["channels_last", "grouped", "fast_lrn", "fast_conv1", "fast_fc", "fft_conv2", "fft_conv3_5"]
ON = {"fft_conv2": "on", "fft_conv3_5": "on"}  # switches set by word (auto, on, off); the rest True


def config(speed: SpeedConfig, **model) -> Config:
    return Config(model=ModelConfig(num_classes=10, **model), speed=speed)


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 224, 224, 3, generator=g) * 50
    return images.permute(0, 3, 1, 2), torch.randint(0, 10, (n,), generator=g)  # the loader's layout


def train_pass(cfg: Config, x, y, dtype=torch.float32):
    """Logits, loss and gradients (two-tower keys) of one training-mode pass, dropout on."""
    model = build_model(cfg, OneDevice("cpu")).to(dtype).train()
    model.reseed_dropout(5)
    x = x.to(dtype)
    logits = model(x if cfg.speed.channels_last else x.contiguous())
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    if model.grouped:
        grads = from_grouped_state(grads, model.m)
    return logits.detach(), loss.detach(), grads


def flavour_model(flavour):
    if flavour == "code145":
        return dict(lrn="code145", conv1_order="code145", conv2_rnorm=True, fc8="tower0")
    return {}


@pytest.fixture(scope="module")
def reference():
    """The plain reference (every switch off) in float64 and float32, both LRN flavours."""
    x, y = batch()
    return x, y, {(flavour, dtype): train_pass(config(PLAIN, **flavour_model(flavour)), x, y, dtype)
                  for flavour in ("paper", "code145") for dtype in (torch.float64, torch.float32)}


def assert_same(result, ref, tol, grads=True):
    logits, loss, g = result
    assert rel_err(logits, ref[0]) < tol
    assert abs(loss.item() - ref[1].item()) <= tol * abs(ref[1].item())
    assert g.keys() == ref[2].keys()
    for name, grad in g.items():
        if grads and grad.numel():
            assert rel_err(grad, ref[2][name]) < tol, name


# Gradients are compared in float64 only (tests/tolerance.py, rule 2): in float32 a max-pool
# near-tie may route a gradient elsewhere. The float32 kernels themselves are held to rule 1 op
# by op (test_lrn, test_conv1, and the oneDNN test below).

@pytest.mark.slow
@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_alone_computes_the_same_step(switch, reference):
    x, y, ref = reference
    cfg = config(dataclasses.replace(PLAIN, **{switch: ON.get(switch, True)}))
    assert_same(train_pass(cfg, x, y, torch.float64), ref["paper", torch.float64], TOL64)
    assert_same(train_pass(cfg, x, y), ref["paper", torch.float32], TOL, grads=False)


@pytest.mark.slow
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("flavour", ["paper", "code145"])
def test_default_speed_equals_plain_reference(flavour, channels_last, reference):
    """What the trainer runs by default (every switch but channels-last, fft_conv3_5, bf16 and
    compile; fft_conv2 as this machine's "auto" chooses), and that plus channels-last (the demo's,
    on CPUs): dropout masks included."""
    x, y, ref = reference
    defaults = Config().speed
    assert all(getattr(defaults, s) is True for s in SWITCHES if s not in ON and s != "channels_last")
    assert (defaults.fft_conv2, defaults.fft_conv3_5) == ("auto", "off")
    assert not (defaults.channels_last or defaults.bf16 or defaults.compile)
    cfg = config(dataclasses.replace(defaults, channels_last=channels_last), **flavour_model(flavour))
    assert_same(train_pass(cfg, x, y, torch.float64), ref[flavour, torch.float64], TOL64)
    assert_same(train_pass(cfg, x, y), ref[flavour, torch.float32], TOL, grads=False)


@pytest.mark.parametrize("fft", ["auto", "on"])
def test_default_model_keeps_activations_channels_last(fft):
    """Every conv, ReLU/LRN and pool output stays [B, H, W, C] in memory: no hidden layout copies
    (with the convolutions by Fourier transforms too, whatever this machine's auto chooses)."""
    speed = dataclasses.replace(Config().speed, channels_last=True, fft_conv2=fft, fft_conv3_5=fft)
    model = build_model(config(speed), OneDevice("cpu")).train()
    tower = model.towers["grouped"]
    layouts = {}

    def record(name):
        def hook(mod, inp, out):
            layouts.setdefault(name, []).append(out.is_contiguous(memory_format=torch.channels_last))
        return hook

    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "lrn", "pool"):
        getattr(tower, name).register_forward_hook(record(name))
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    assert layouts.keys() == {"conv1", "conv2", "conv3", "conv4", "conv5", "lrn", "pool"}
    assert all(all(v) for v in layouts.values()), layouts
    assert all(p.grad.is_contiguous(memory_format=torch.channels_last)
               for n, p in model.named_parameters() if p.dim() == 4 and "conv1" not in n)


@pytest.mark.parametrize("shape", [(5, 7, 3), (128, 9216, 16)])
def test_onednn_linear_equals_linear(shape, monkeypatch):
    """oneDNN's products equal F.linear's, and F.linear takes over without the op. Where torch has
    oneDNN, the fast path must be taken: the op is private (torch.ops.mkldnn._linear_pointwise),
    and a torch without it would otherwise compare F.linear with itself here, and pass."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip(f"torch {torch.__version__} is built without oneDNN: fast_fc computes F.linear")
    n, n_in, n_out = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, n_in, generator=g, requires_grad=True)
    lin = torch.nn.Linear(n_in, n_out)
    fast = linear.Linear(n_in, n_out)
    fast.load_state_dict(lin.state_dict())
    gy = torch.randn(n, n_out, generator=g)
    want = torch.autograd.grad(lin(x), (x, lin.weight, lin.bias), gy)
    assert linear._matmul is not None, (f"torch {torch.__version__} has oneDNN but no "
                                        "torch.ops.mkldnn._linear_pointwise: fast_fc falls back to F.linear; "
                                        "repro/fast/linear.py needs another op")
    assert linear.available(x, fast.weight)
    out = fast(x)
    assert "Linear" in type(out.grad_fn).__name__  # oneDNN's path, not F.linear's
    got = torch.autograd.grad(out, (x, fast.weight, fast.bias), gy)
    # sum |terms| of each element (tests/tolerance.py, rule 1): the same products on |values|
    xa, wa, ba = (t.detach().double().abs().requires_grad_() for t in (x, lin.weight, lin.bias))
    ya = F.linear(xa, wa, ba)
    mags = (ya, *torch.autograd.grad(ya, (xa, wa, ba), gy.double().abs()))
    assert_sums_close(out, lin(x), mags[0], n_in + 1, "output")
    for name, a, b, mag, terms in zip(("input", "weight", "bias"), got, want, mags[1:], (n_out, n, n)):
        assert_sums_close(a, b, mag, terms, f"{name} gradient")
    with torch.no_grad():
        assert_sums_close(fast(x), lin(x), mags[0], n_in + 1, "output without autograd")
    monkeypatch.setattr(linear, "_matmul", None)  # torch without the op: plain F.linear
    assert not linear.available(x, fast.weight)
    torch.testing.assert_close(fast(x), lin(x), rtol=0, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.trace, as ./run.sh export
def test_onednn_linear_leaves_empty_other_dtypes_and_tracing_to_torch():
    with pytest.warns(UserWarning, match="zero-element"):
        empty = linear.Linear(8, 0)  # code 145's tower 1 holds no part of fc8
    assert empty(torch.randn(3, 8)).shape == (3, 0)
    assert not linear.available(torch.randn(3, 8).double(), torch.randn(2, 8).double())
    traced = torch.jit.trace(linear.Linear(8, 4).eval(), torch.randn(3, 8))  # as ./run.sh export does
    assert "mkldnn" not in str(traced.inlined_graph) and "linear" in str(traced.inlined_graph)


@pytest.mark.slow
def test_keep_freed_memory_stops_refaulting_big_blocks():
    """In a fresh process: re-allocating freed 80 MB blocks faults pages in afresh every time by
    default, and hardly at all with keep_freed_memory() once the heap has grown to its
    high-water mark. How many rounds that takes varies from run to run (1 to 4 of 3 blocks each
    on this project's machine, with both Pythons CI uses); the last of 12 rounds is measured.

    The faults counted are those of glibc's own malloc with its defaults in base pages, whatever
    the environment: the child runs without LD_PRELOAD (jemalloc, tcmalloc: another allocator),
    the MALLOC_* variables and GLIBC_TUNABLES (other thresholds; MALLOC_MMAP_MAX_=0 or a large
    MALLOC_MMAP_THRESHOLD_ alone keeps freed blocks), and with transparent huge pages turned off
    for itself (prctl PR_SET_THP_DISABLE): with THP "always" one fault maps 2 MB, and a round's
    faults by default fall from 61,440 to about 120 to 1,700, with how its blocks align. Where
    the prctl fails (no such kernel) the bounds hold for 2 MB pages still."""
    import os
    import platform

    if platform.libc_ver()[0] != "glibc":  # keep_freed_memory is a glibc malloc setting (mallopt)
        pytest.skip("keep_freed_memory works on glibc only")
    script = textwrap.dedent("""
        import ctypes, resource, sys
        PR_SET_THP_DISABLE = 41  # linux/prctl.h; for this process, before its big blocks exist
        print(ctypes.CDLL(None).prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0)
        import torch
        from repro.fast.memory import keep_freed_memory
        if sys.argv[1] == "keep":
            assert keep_freed_memory()
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for round in range(12):
            before = faults()
            for _ in range(3):
                torch.empty(20 << 20).fill_(1)  # 80 MB, freed at once
        print(faults() - before)
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES") and not k.startswith("MALLOC_")}
    counts, small_pages = {}, []
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, env=env,
                             check=True, cwd=str(__import__("pathlib").Path(__file__).parent.parent))
        small_pages.append(out.stdout.split()[0] == "True")
        counts[mode] = int(out.stdout.split()[-1])
    # by default every page of the 3 freed blocks is faulted in again: 240 MB in base pages (4 KB
    # on x86-64; 16 or 64 KB on some arm64 kernels), or at least 120 faults of at most 2 MB where
    # huge pages could not be turned off
    page = os.sysconf("SC_PAGE_SIZE")
    assert counts["default"] > (0.9 * 3 * (80 << 20) / page if all(small_pages) else 100), counts
    assert counts["keep"] < counts["default"] / 10, counts


@pytest.mark.slow
def test_grouped_default_writes_tower_checkpoints_that_load_anywhere(tmp_path):
    cfg = config(Config().speed)
    grouped = build_model(cfg, OneDevice("cpu"))
    assert grouped.grouped
    ckpt = checkpoint.save(tmp_path, 1, grouped, None, {"step": 1}, keep=1)
    assert sorted(p.name for p in ckpt.glob("tower*.pt")) == ["tower0.pt", "tower1.pt"]
    towers = AlexNet.from_config(config(PLAIN), seed=99)  # other weights, until loaded
    checkpoint.load_into(ckpt, towers)
    x, _ = batch()
    with torch.no_grad():
        assert rel_err(towers.eval()(x.contiguous()), grouped.eval()(x)) < TOL


def test_fast_paths_run_under_bf16_autocast_and_normalise_in_float32():
    """speed.bf16 with the fast conv1 and LRN: forward and backward work, LRN stays float32."""
    cfg = Config()
    cfg.model.num_classes = 10
    model = AlexNet.from_config(cfg, grouped=True).train()
    seen = {}
    model.towers["grouped"].lrn.register_forward_hook(lambda m, i, o: seen.setdefault("lrn", o.dtype) and None)
    with torch.autocast("cpu", torch.bfloat16):
        logits = model(torch.randn(2, 3, 224, 224) * 50)
    F.cross_entropy(logits.float(), torch.tensor([1, 2])).backward()
    assert logits.dtype == torch.bfloat16 and seen["lrn"] == torch.float32
    grad = model.towers["grouped"].conv1.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.slow
def test_compile_traces_the_model_once_whatever_the_dropout_seeds():
    """speed.compile: the dropout masks (seeds change every step) and the exchange counts stay out
    of the traced code, and the LRN is traced as the plain formula, so torch.compile traces the
    model once instead of again every step (dynamo's "eager" backend: tracing only, no compiler).
    The masks are the eager model's: same logits as without compile, within float32 rounding."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    widths = Widths(conv1=16, conv2=32, conv3=48, conv4=48, conv5=32, fc6=64, fc7=64)
    cfg = Config(model=ModelConfig(num_classes=10, widths=widths))
    model = build_model(cfg, OneDevice("cpu")).train()
    compiled = torch.compile(model, backend="eager")
    x, y = batch()
    graphs = []
    for step in range(4):
        model.reseed_dropout(step)
        F.cross_entropy(compiled(x), y).backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[1] == graphs[-1] > 0, graphs
    model.reseed_dropout(7)
    eager = model(x)
    model.reseed_dropout(7)
    assert rel_err(compiled(x), eager) < TOL
