"""The placements (docs/architecture.md, "Placements") give the same network (section 3.2: cross-tower
traffic at conv3's input and every fully-connected layer's input, nowhere else)."""
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repro.config import ModelConfig
from repro.grouped import from_grouped_state
from repro.model import AlexNet
from repro.parallel import Distributed, OneDevice, TwoDevices
from tests.dist_util import run_gloo
from tests.tolerance import FLOAT32_NET_TOL, FLOAT64_TOL, rel_err

# Placements that run other kernels (the grouped emulation's grouped convolutions; gloo processes
# with one thread each) are compared in float64, logits, loss and gradients, and in float32,
# logits and loss (tests/tolerance.py, rule 2). TwoDevices on two CPU "devices" runs the very
# same operations as OneDevice, so there the float32 results are bit-identical.
SEED = 11
F64, F32 = torch.float64, torch.float32


def inputs(batch=2, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, 224, 224, generator=g) * 50, torch.randint(0, classes, (batch,), generator=g)


def run(model, x, y, dtype=F32):
    """Logits, loss and every gradient (keyed by two-tower state_dict names) in eval mode."""
    model.to(dtype).eval()
    x = x.to(dtype)
    model.zero_grad()
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    if model.grouped:
        grads = from_grouped_state(grads, model.m)
    return logits.detach(), loss.detach(), grads


def assert_same(result, reference, tol=FLOAT64_TOL, grads=True):
    logits, loss, got = result
    ref_logits, ref_loss, ref_grads = reference
    assert rel_err(logits, ref_logits) < tol
    assert abs(loss.item() - ref_loss.item()) <= tol * abs(ref_loss.item())
    assert got.keys() <= ref_grads.keys() and got
    for name, g in got.items():
        if grads and g.numel():
            assert rel_err(g, ref_grads[name]) < tol, name


def assert_identical(result, reference):
    assert torch.equal(result[0], reference[0]) and torch.equal(result[1], reference[1])
    assert result[2].keys() == reference[2].keys()
    assert all(torch.equal(g, reference[2][name]) for name, g in result[2].items())


CONFIGS = {
    "paper": ModelConfig(num_classes=10),
    "code145": ModelConfig(num_classes=10, lrn="code145", conv1_order="code145", conv2_rnorm=True, fc8="tower0"),
    "no_cross_links": ModelConfig(num_classes=10, cross_links=False),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request):
    m = CONFIGS[request.param]
    x, y = inputs()
    reference = {dtype: run(AlexNet.from_config(m, seed=SEED), x, y, dtype) for dtype in (F64, F32)}
    return m, x, y, reference


@pytest.mark.slow
def test_two_devices_equal_one_device(case):
    m, x, y, reference = case
    for dtype in (F64, F32):
        model = AlexNet.from_config(m, placement=TwoDevices(["cpu", "cpu"]), seed=SEED)
        assert_identical(run(model, x, y, dtype), reference[dtype])


@pytest.mark.slow
def test_grouped_emulation_equals_towers(case):
    m, x, y, reference = case
    assert_same(run(AlexNet.from_config(m, grouped=True, seed=SEED), x, y, F64), reference[F64])
    assert_same(run(AlexNet.from_config(m, grouped=True, seed=SEED), x, y, F32), reference[F32],
                FLOAT32_NET_TOL, grads=False)


def _take(path: Path):
    """A process's results, loaded, and its file removed at once: hundreds of MB of float64
    gradients each, which would otherwise stay on disk until the end of the run."""
    result = torch.load(path, weights_only=True)
    path.unlink()
    return result


def _gloo_pair(rank, world, m, x, y, out_dir):
    model = AlexNet.from_config(m, placement=Distributed(m.towers, "cpu"), seed=SEED)
    result32 = run(AlexNet.from_config(m, placement=model.placement, seed=SEED), x, y, F32)
    model.placement.log.clear()  # count the float64 pass's exchanges only
    logits, loss, grads = run(model, x, y, F64)
    log = dataclasses.replace(model.placement.log, calls=dict(model.placement.log.calls),
                              bytes=dict(model.placement.log.bytes))
    # LRN never mixes towers: perturb tower 1's conv1 output, record tower 0's normalised output.
    lrn_out = {}
    tower = model.towers[str(rank)]
    if tower.lrn is not None:
        def record(mod, inp, out):
            lrn_out[len(lrn_out)] = out.detach().clone()

        tower.lrn.register_forward_hook(record)
        with torch.no_grad():
            model(x.double())
            if rank == 1:
                tower.conv1.register_forward_hook(lambda mod, i, o: o + 1000.0)
            model(x.double())
    torch.save({"logits": logits, "loss": loss, "grads": grads, "bytes": log.bytes, "calls": log.calls,
                "lrn": lrn_out, "float32": result32}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_two_gloo_processes_equal_one_device(case, tmp_path):
    m, x, y, reference = case
    run_gloo(_gloo_pair, 2, m, x, y, str(tmp_path))
    ranks = [_take(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r in ranks:  # every process holds the full logits and the same loss
        assert_same((r["logits"], r["loss"], r["grads"]), reference[F64])
        assert_same(r["float32"], reference[F32], FLOAT32_NET_TOL, grads=False)
    assert set(ranks[0]["grads"]) | set(ranks[1]["grads"]) == set(reference[F64][2])
    if m.lrn != "none":
        first, second = ranks[0]["lrn"][0], ranks[0]["lrn"][2]  # tower 0's conv1 LRN, both passes
        assert torch.equal(first, second)
        assert not torch.equal(ranks[1]["lrn"][0], ranks[1]["lrn"][2])  # the perturbation was real
    assert ranks[0]["calls"] == ranks[1]["calls"] == {p: 1 for p in expected_exchange_bytes(m, 1)}
    both = {p: ranks[0]["bytes"][p] + ranks[1]["bytes"][p] for p in ranks[0]["bytes"]}
    assert both == expected_exchange_bytes(m, batch=len(x), itemsize=8)  # the float64 pass


def expected_exchange_bytes(m: ModelConfig, batch: int, itemsize: int = 4) -> dict:
    """Bytes each tower receives from the other per exchange point, from the layer sizes
    (float32 activations unless `itemsize` says otherwise)."""
    t, w = m.towers, m.widths
    per_tower = {"conv3": w.conv2 // t * 13 * 13, "fc6": w.conv5 // t * 6 * 6,
                 "fc7": w.fc6 // t, "fc8": w.fc7 // t}
    points = per_tower if m.cross_links else {"fc8": per_tower["fc8"]}
    return {p: n * itemsize * (t - 1) * t * batch for p, n in points.items()}


@pytest.mark.parametrize("placement", ["one", "two"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_exchange_points_and_bytes(placement, name):
    m = CONFIGS[name]
    place = OneDevice() if placement == "one" else TwoDevices(["cpu", "cpu"])
    model = AlexNet.from_config(m, placement=place, seed=SEED).eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 224, 224))
    want = expected_exchange_bytes(m, batch=3)
    assert place.log.calls == {p: 1 for p in want}
    assert place.log.bytes == want
    # per image: conv3 173,056 B, fc6 36,864 B, fc7 16,384 B, fc8 16,384 B for the paper's widths
    if m.cross_links:
        assert {p: b // 3 for p, b in place.log.bytes.items()} == {
            "conv3": 173_056, "fc6": 36_864, "fc7": 16_384, "fc8": 16_384}


@pytest.mark.parametrize("where", ["one", "two", "grouped"])
def test_lrn_never_mixes_towers(where):
    m = ModelConfig(num_classes=10)
    if where == "grouped":
        model = AlexNet.from_config(m, grouped=True, seed=SEED).eval()
        t0 = t1 = model.towers["grouped"]
    else:
        place = OneDevice() if where == "one" else TwoDevices(["cpu", "cpu"])
        model = AlexNet.from_config(m, placement=place, seed=SEED).eval()
        t0, t1 = model.towers["0"], model.towers["1"]
    seen = []

    def record(mod, inp, out):
        if len(seen) % 2 == 0:  # the first LRN call of each tower in a pass is conv1's
            seen.append(out[:, :48].clone() if where != "grouped" else out.view(-1, 2, 48, 55, 55)[:, 0].clone())
        else:
            seen.append(None)

    x = torch.randn(1, 3, 224, 224)
    handle = t0.lrn.register_forward_hook(record)
    with torch.no_grad():
        model(x)
        clean = seen[0]

        def perturb(mod, inp, out):
            out = out.clone()
            if where == "grouped":
                out[:, 48:] += 100.0  # tower 1's maps only
            else:
                out += 100.0
            return out

        t1.conv1.register_forward_hook(perturb)
        seen.clear()
        logits_perturbed = model(x)
    handle.remove()
    assert torch.equal(seen[0], clean)
    assert logits_perturbed.abs().sum() > 0


def _gloo_data_parallel(rank, world, m, x, y, out_dir):
    place = Distributed(m.towers, "cpu")
    model = AlexNet.from_config(m, placement=place, seed=SEED).eval()
    half = len(x) // place.pairs
    rows = slice(place.pair * half, (place.pair + 1) * half)  # each pair a different half of the batch
    model.double()
    loss = F.cross_entropy(model(x[rows].double()), y[rows])
    loss.backward()
    place.sync_gradients(model)
    torch.save({n: p.grad for n, p in model.named_parameters()}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.slow
def test_data_parallel_pairs_equal_one_pair_on_whole_batch(tmp_path):
    m = dataclasses.replace(CONFIGS["paper"])
    x, y = inputs(batch=4)
    _, _, reference = run(AlexNet.from_config(m, seed=SEED), x, y, F64)
    run_gloo(_gloo_data_parallel, 4, m, x, y, str(tmp_path))
    for rank in range(4):
        grads = _take(tmp_path / f"rank{rank}.pt")
        assert set(grads) == {k for k in reference if k.startswith(f"towers.{rank % 2}.")}
        for name, g in grads.items():
            assert rel_err(g, reference[name]) < FLOAT64_TOL, (rank, name)


@pytest.mark.slow
def test_dropout_masks_are_the_same_in_every_placement():
    """Training mode: each tower draws its masks from its own stream, wherever it runs."""
    m = CONFIGS["paper"]
    x, y = inputs()
    results = {}
    for dtype in (F64, F32):
        for kind in ("one", "two", "grouped"):
            place = TwoDevices(["cpu", "cpu"]) if kind == "two" else None
            model = AlexNet.from_config(m, placement=place, grouped=kind == "grouped", seed=SEED).to(dtype).train()
            model.reseed_dropout(5)
            logits = model(x.to(dtype))
            loss = F.cross_entropy(logits, y)
            loss.backward()
            grads = {n: p.grad for n, p in model.named_parameters()}
            results[kind, dtype] = (logits.detach(), loss.detach(),
                                    from_grouped_state(grads, m) if kind == "grouped" else grads)
            model.reseed_dropout(6)
            assert not torch.allclose(model(x.to(dtype)), logits)  # another seed, other masks
    for dtype in (F64, F32):
        assert_identical(results["two", dtype], results["one", dtype])
    assert_same(results["grouped", F64], results["one", F64])
    assert_same(results["grouped", F32], results["one", F32], FLOAT32_NET_TOL, grads=False)


# ------------------------------------------------------------- the gloo helper's own failure paths

def _fails_on_rank_one(rank, world):
    if rank == 1:
        raise ValueError("rank one fails on purpose")
    torch.distributed.barrier()  # rank 0 waits here for a rank that never comes


def _never_ends(rank, world):
    torch.distributed.barrier()
    import time
    time.sleep(600)


@pytest.mark.slow
def test_gloo_helper_reports_the_failing_ranks_traceback():
    """Rank 1 fails; rank 0, waiting for it in a barrier, fails in turn (or is ended): the error
    holds rank 1's own traceback, whichever rank was noticed first."""
    with pytest.raises(RuntimeError, match=r"(?s)gloo rank 1 of 2 \(exited with code 1\) failed:.*"
                                           r"ValueError: rank one fails on purpose"):
        run_gloo(_fails_on_rank_one, 2)


@pytest.mark.slow
def test_gloo_helper_ends_processes_still_running_at_its_deadline():
    with pytest.raises(TimeoutError, match=r"_never_ends in 2 gloo processes not finished after 3 s: "
                                           r"rank 0: running \(pid \d+\), rank 1: running"):
        run_gloo(_never_ends, 2, deadline_s=3)
