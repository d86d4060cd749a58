"""Fused Triton MaxSim against the float64 definition: scores, argmax and loss gradients on ragged inputs.

On a CUDA machine the kernels run compiled (float32 through tf32x3, and bf16); elsewhere in Triton's interpreter
(``TRITON_INTERPRET=1``, set by conftest.py) in float64, where they must agree with the naive differentiable ``maxsim`` to rounding. Inputs are random and
continuous, so no maximum is tied.
"""
from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
triton = pytest.importorskip("triton")
if not CUDA and os.environ.get("TRITON_INTERPRET") != "1":  # conftest.py sets it on CPU-only machines
    pytest.skip("no CUDA device and Triton's interpreter is off", allow_module_level=True)
if not CUDA and tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 9):
    pytest.skip("Triton's interpreter needs triton >= 3.9 (loop bounds loaded from memory)", allow_module_level=True)

from retriever.model.embeddings import MultiVector, pad_multivector  # noqa: E402
from retriever.scoring import chunked_maxsim, maxsim, maxsim_blocked, maxsim_lists  # noqa: E402
from retriever.scoring.fused.autograd import fused_maxsim  # noqa: E402
from retriever.scoring.fused.config import BlockConfig, block_config  # noqa: E402
from retriever.scoring.fused.evaluation import maxsim_packed, maxsim_padded_fused  # noqa: E402
from retriever.scoring.fused.launch import launch_forward  # noqa: E402
from retriever.scoring.fused.packing import MAX_PARTS_PER_TILE, PackedPages, QueryTiles  # noqa: E402
from retriever.training.losses import ContrastiveLoss  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.float32 if CUDA else torch.float64  # the "exact" dtype of each mode
TOL = {"rtol": 1e-5, "atol": 1e-4} if CUDA else {"rtol": 1e-10, "atol": 1e-10}
EVAL_TOL = TOL if CUDA else {"rtol": 1e-6, "atol": 1e-6}  # evaluation scores are returned in float32
SMALL = BlockConfig(16, 16, 2 if CUDA else 1, 2 if CUDA else 1, 16)  # many tiles, page blocks and split queries
needs_cuda = pytest.mark.skipif(not CUDA, reason="compiled kernels and dispatch need a CUDA device")


def _vectors(lengths: list[int], dim: int, gen: torch.Generator, scale: float = 1.0) -> list[torch.Tensor]:
    return [torch.randn(n, dim, generator=gen, dtype=torch.float64) * scale for n in lengths]


def _reference(queries: list[torch.Tensor], pages: list[torch.Tensor]) -> torch.Tensor:
    """float64 MaxSim by the definition (padded, masked); queries without tokens score 0."""
    q, qm = pad_multivector([x if len(x) else x.new_zeros(1, x.shape[1]) for x in queries])
    qm &= torch.tensor([len(x) > 0 for x in queries])[:, None]
    d, dm = pad_multivector(pages)
    return maxsim(q.double(), qm, d.double(), dm)


def _padded(n: int, length: int, dim: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded float64 batch with scattered valid tokens (at least one per item) and large garbage padding."""
    emb = torch.randn(n, length, dim, generator=gen, dtype=torch.float64)
    mask = torch.rand(n, length, generator=gen) < 0.6
    mask[torch.arange(n), torch.randint(0, length, (n,), generator=gen)] = True
    emb[~mask] *= 50
    return emb, mask


@pytest.mark.parametrize("pages_per_program", [1, 3])  # 3: the last program has one live page of three
def test_scores_match_reference_on_ragged_inputs(pages_per_program: int) -> None:
    gen = torch.Generator().manual_seed(0)
    queries = _vectors([3, 16, 1, 40, 7, 0, 17], 24, gen)  # 40 and 17 tokens: split over 16-row tiles
    pages = _vectors([1, 50, 9, 16, 33, 1, 20], 24, gen)  # single-token pages, partial and full blocks
    packed = PackedPages.pack([p.to(DEVICE, DTYPE) for p in pages])
    cfg = dataclasses.replace(SMALL, pages_per_program=pages_per_program)
    got = maxsim_packed([q.to(DEVICE) for q in queries], packed, DTYPE, DEVICE, chunk_tokens=60, cfg=cfg)
    expected = _reference(queries, pages)
    assert got.shape == (7, 7) and (got[5] == 0).all()
    torch.testing.assert_close(got.cpu().double(), expected, **EVAL_TOL)


def test_many_short_queries_fill_tiles_up_to_the_part_limit() -> None:
    """70 one-token queries in 64-row tiles: tiles close at MAX_PARTS_PER_TILE parts, scores stay right."""
    gen = torch.Generator().manual_seed(8)
    queries, pages = _vectors([1] * 70, 16, gen), _vectors([9, 30, 2], 16, gen)
    tiles = QueryTiles.build(torch.cat(queries), torch.arange(70), [1] * 70, 64)
    assert tiles.n_tiles == 3 and tiles.nseg == MAX_PARTS_PER_TILE
    cfg = BlockConfig(64, 16, SMALL.num_warps, SMALL.num_stages, 16)
    got = maxsim_packed([q.to(DEVICE) for q in queries], PackedPages.pack([p.to(DEVICE) for p in pages]), DTYPE,
                        DEVICE, cfg=cfg)
    torch.testing.assert_close(got.cpu().double(), _reference(queries, pages), **EVAL_TOL)


def test_all_negative_scores_ignore_padding() -> None:
    """Every real dot product is negative: zero (or any) padding winning a max would show."""
    gen = torch.Generator().manual_seed(1)
    q = torch.rand(3, 5, 8, generator=gen, dtype=torch.float64) + 0.1
    qm = torch.tensor([[True] * 5, [True, False, True, False, False], [False, False, False, False, True]])
    d = -torch.rand(4, 21, 8, generator=gen, dtype=torch.float64) - 0.1
    dm = torch.rand(4, 21, generator=gen) < 0.5
    dm[:, 20] = True
    d[~dm] = 0.0
    expected = maxsim(q, qm, d, dm)
    assert (expected < 0).all()
    got = maxsim_padded_fused(q.to(DEVICE), qm.to(DEVICE), d.to(DEVICE), dm.to(DEVICE), DTYPE)
    torch.testing.assert_close(got.cpu().double(), expected, **EVAL_TOL)


def test_argmax_is_the_winning_page_token() -> None:
    gen = torch.Generator().manual_seed(2)
    queries = _vectors([5, 19, 2], 16, gen)
    pages = _vectors([37, 1, 16], 16, gen)
    flat = torch.cat(queries).to(DEVICE, DTYPE)
    tiles = QueryTiles.build(flat, torch.arange(flat.shape[0], device=DEVICE), [5, 19, 2], SMALL.block_q)
    packed = PackedPages.pack([p.to(DEVICE, DTYPE) for p in pages])
    _, idx = launch_forward(tiles, packed, True, SMALL)
    filled = (tiles.source >= 0).cpu()
    rows = torch.cat(queries)[tiles.source.cpu()[filled]]
    for j, page in enumerate(pages):
        torch.testing.assert_close(idx[j].cpu()[filled].long(), (rows @ page.T).argmax(dim=1))


@pytest.mark.parametrize("lq", [6, 37])  # 37 > block_q: a query's rows span several tiles
def test_loss_gradients_equal_naive_maxsim(lq: int) -> None:
    gen = torch.Generator().manual_seed(3)
    q, qm = _padded(5, lq, 16, gen)
    qm[3] = False  # a query without tokens: score 0, no gradient
    d, dm = _padded(6, 45, 16, gen)
    grad_out = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    q_ref, d_ref = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
    expected = maxsim(q_ref, qm, d_ref, dm)
    expected.backward(grad_out)
    q_dev = q.to(DEVICE, DTYPE).requires_grad_(True)
    d_dev = d.to(DEVICE, DTYPE).requires_grad_(True)
    got = fused_maxsim(q_dev, qm.to(DEVICE), d_dev, dm.to(DEVICE), SMALL)
    got.backward(grad_out.to(DEVICE, got.dtype))
    torch.testing.assert_close(got.detach().cpu().double(), expected.detach(), **TOL)
    torch.testing.assert_close(q_dev.grad.cpu().double(), q_ref.grad, **TOL)
    torch.testing.assert_close(d_dev.grad.cpu().double(), d_ref.grad, **TOL)
    assert (d_dev.grad.cpu()[~dm] == 0).all() and (q_dev.grad.cpu()[~qm] == 0).all()
    assert d_ref.grad.abs().sum() > 0 and q_ref.grad.abs().sum() > 0


def test_page_gradient_with_concentrated_argmax_and_page_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Most rows pick one dominant page token (one block's row list spans many ``BLOCK_Q`` steps, the others are
    short or empty); the page-gradient pass runs one page per chunk, sorts 16 rows per step into 64-bit row lists,
    and forward programs take three pages each (the second program one live page): gradients stay exact."""
    import retriever.scoring.fused.launch as launch

    monkeypatch.setattr(launch, "SORTED_ENTRIES", 1)
    monkeypatch.setattr(launch, "SORT_STEP", 1)
    monkeypatch.setattr(launch, "INT32_ENTRIES", 0)  # the 64-bit row lists of very large batches
    gen = torch.Generator().manual_seed(9)
    q, qm = _padded(6, 23, 16, gen)
    q = q.abs() + 0.1  # positive queries: a large positive page token wins their rows
    d, dm = _padded(4, 70, 16, gen)
    d[:, 37] = 5.0 + torch.rand(4, 16, generator=gen, dtype=torch.float64)
    dm[:, 37] = True
    grad_out = torch.randn(6, 4, generator=gen, dtype=torch.float64)
    q_ref, d_ref = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
    maxsim(q_ref, qm, d_ref, dm).backward(grad_out)
    q_dev = q.to(DEVICE, DTYPE).requires_grad_(True)
    d_dev = d.to(DEVICE, DTYPE).requires_grad_(True)
    cfg = dataclasses.replace(SMALL, pages_per_program=3)
    fused_maxsim(q_dev, qm.to(DEVICE), d_dev, dm.to(DEVICE), cfg).backward(grad_out.to(DEVICE, DTYPE))
    assert (d_ref.grad[:, 37].abs().sum(-1) > 0).all()
    torch.testing.assert_close(d_dev.grad.cpu().double(), d_ref.grad, **TOL)
    torch.testing.assert_close(q_dev.grad.cpu().double(), q_ref.grad, **TOL)


def test_half_precision_scores_and_gradients() -> None:
    """16-bit inputs (fp16: the interpreter has no bf16) multiply exactly and accumulate in float32; only ``g * q``
    is rounded to fp16 for the page gradient."""
    gen = torch.Generator().manual_seed(7)
    q, qm = _padded(4, 9, 16, gen)
    d, dm = _padded(5, 40, 16, gen)
    q, d = q.half().double(), d.half().double()  # the reference sees the rounded inputs
    q_ref, d_ref = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
    grad_out = torch.randn(4, 5, generator=gen, dtype=torch.float64)
    expected = maxsim(q_ref, qm, d_ref, dm)
    expected.backward(grad_out)
    q_dev = q.to(DEVICE, torch.float16).requires_grad_(True)
    d_dev = d.to(DEVICE, torch.float16).requires_grad_(True)
    got = fused_maxsim(q_dev, qm.to(DEVICE), d_dev, dm.to(DEVICE), SMALL)
    got.backward(grad_out.to(DEVICE, got.dtype))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.detach().cpu().double(), expected.detach(), rtol=1e-5, atol=1e-4)
    for mine, ref in ((q_dev.grad, q_ref.grad), (d_dev.grad, d_ref.grad)):
        assert (mine.cpu().double() - ref).abs().max() <= 3e-3 * ref.abs().max()


@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-3])
def test_fp32_scored_as_three_fp16_products(scale: float) -> None:
    """``split_fp32``: fp32 inputs scored as three fp16 products over their halves stay within 5e-7 relative of the
    float64 scores (fp32-level: a score of 40 has an fp32 spacing of 3.8e-6; the interpreter gives 1e-7), far closer
    than fp16 alone (so the low halves count). Inputs at several scales check the power-of-two rescaling into fp16's
    range."""
    gen = torch.Generator().manual_seed(10)
    unit = [torch.nn.functional.normalize(x, dim=-1) * scale for x in _vectors([5, 40, 12, 1, 33], 64, gen)]
    queries, pages = unit[:2] + unit[3:4], unit[1:]
    cfg = dataclasses.replace(SMALL, split_fp32=True)
    got = maxsim_packed([q.to(DEVICE, torch.float32) for q in queries],
                        PackedPages.pack([p.to(DEVICE, torch.float32) for p in pages]), torch.float32, DEVICE, cfg=cfg)
    exact = _reference(queries, pages)
    fp16_error = (_reference([q.half().double() for q in queries], [p.half().double() for p in pages])
                  - exact).abs().max()
    error = (got.cpu().double() - exact).abs().max()
    assert error <= 5e-7 * exact.abs().max() and error * 30 < fp16_error, (error, fp16_error)


def test_fp16_halves_round_like_torch() -> None:
    """The split kernel's halves equal torch's round-to-nearest conversions bit for bit (odd sizes, a zero row,
    tiny and large entries), and an all-zero or empty input needs no scaling."""
    from retriever.scoring.fused.launch import LO_SCALE, _split_fp16

    gen = torch.Generator().manual_seed(12)
    x = torch.randn(37, 129, generator=gen) * torch.logspace(-6, 2, 129)
    x[5] = 0
    hi, lo, scale = _split_fp16(x.to(DEVICE))
    scaled = x * scale
    assert 0.5 < float(x.abs().max()) * scale <= 1 and math.log2(scale).is_integer()
    assert torch.equal(hi.cpu(), scaled.half())
    assert torch.equal(lo.cpu(), ((scaled - scaled.half().float()) * LO_SCALE).half())
    assert _split_fp16(torch.zeros(3, 4, device=DEVICE))[2] == 1.0
    assert _split_fp16(torch.zeros(0, 4, device=DEVICE))[0].shape == (0, 4)


def test_empty_inputs_and_pages_without_tokens() -> None:
    gen = torch.Generator().manual_seed(4)
    pages = [p.to(DEVICE, DTYPE) for p in _vectors([3, 4], 16, gen)]
    assert maxsim_packed([], PackedPages.pack(pages), DTYPE, DEVICE, cfg=SMALL).shape == (0, 2)
    q = torch.zeros(0, 4, 16, dtype=DTYPE, device=DEVICE, requires_grad=True)
    d = torch.randn(2, 3, 16, dtype=DTYPE, device=DEVICE, requires_grad=True)
    scores = fused_maxsim(q, torch.zeros(0, 4, dtype=torch.bool, device=DEVICE), d,
                          torch.ones(2, 3, dtype=torch.bool, device=DEVICE), SMALL)
    assert scores.shape == (0, 2)
    scores.sum().backward()
    assert (d.grad == 0).all()
    with pytest.raises(ValueError, match="at least one"):
        PackedPages.pack([pages[0], pages[0][:0]])
    with pytest.raises(ValueError, match="at least one"):
        fused_maxsim(d, torch.ones(2, 3, dtype=torch.bool, device=DEVICE), d,
                     torch.tensor([[True] * 3, [False] * 3], device=DEVICE), SMALL)


@needs_cuda
def test_cuda_dispatch_default_config_and_bf16() -> None:
    """maxsim_lists / maxsim_blocked on CUDA take the fused path (bf16 by default) with the device's tiles."""
    gen = torch.Generator().manual_seed(5)
    queries = _vectors([int(n) for n in torch.randint(1, 70, (40,), generator=gen)], 128, gen)
    pages = _vectors([int(n) for n in torch.randint(1, 400, (30,), generator=gen)], 128, gen, scale=0.1)
    expected = _reference(queries, pages)
    fp32 = maxsim_lists([q.float().cuda() for q in queries], [p.float() for p in pages], compute_dtype=torch.float32)
    torch.testing.assert_close(fp32.cpu().double(), expected, rtol=1e-5, atol=1e-4)
    rounded = _reference([q.bfloat16().double() for q in queries], [p.bfloat16().double() for p in pages])
    bf16 = maxsim_lists([q.float().cuda() for q in queries], [p.float().cuda() for p in pages])
    torch.testing.assert_close(bf16.cpu().double(), rounded, rtol=1e-4, atol=1e-3)
    q, qm = pad_multivector([q.float() for q in queries])
    d, dm = pad_multivector([p.float() for p in pages])
    blocked = maxsim_blocked(q.cuda(), qm.cuda(), d.cuda(), dm.cuda(), compute_dtype=torch.float32)
    torch.testing.assert_close(blocked.cpu(), fp32.cpu())
    assert block_config(DEVICE, torch.bfloat16).block_q >= 64


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_contrastive_loss_matches_chunked_path(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(6)
    q, qm = _padded(12, 20, 128, gen)
    d, dm = _padded(16, 150, 128, gen)
    q, d = (torch.nn.functional.normalize(x, dim=-1).to(dtype) for x in (q, d))
    positives = torch.zeros(12, 16, dtype=torch.bool)
    positives[torch.arange(12), torch.arange(12)] = True
    grads = []
    for device in ("cpu", "cuda"):
        leaves = [q.double().to(device).requires_grad_(True), d.double().to(device).requires_grad_(True)]
        reps = [MultiVector(x if device == "cpu" else x.to(dtype), m.to(device)) for x, m in zip(leaves, (qm, dm))]
        loss = ContrastiveLoss(temperature=0.05)(*reps, positives.to(device))
        loss.backward()
        grads.append((loss.item(), leaves[0].grad.cpu(), leaves[1].grad.cpu()))
    tol = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 3e-2, "atol": 3e-3}
    for cpu_value, cuda_value in zip(grads[0], grads[1]):
        torch.testing.assert_close(torch.as_tensor(cuda_value).double(), torch.as_tensor(cpu_value).double(), **tol)
    assert torch.allclose(chunked_maxsim(q.double(), qm, d.double(), dm), maxsim(q.double(), qm, d.double(), dm))


@needs_cuda
def test_cuda_float64_loss_is_exact() -> None:
    """float64 on CUDA (GradCache's exactness checks) compiles with the device's float64 tiles and stays exact."""
    gen = torch.Generator().manual_seed(11)
    q, qm = _padded(6, 30, 128, gen)
    d, dm = _padded(7, 200, 128, gen)
    grad_out = torch.randn(6, 7, generator=gen, dtype=torch.float64)
    q_ref, d_ref = q.clone().requires_grad_(True), d.clone().requires_grad_(True)
    expected = maxsim(q_ref, qm, d_ref, dm)
    expected.backward(grad_out)
    q_dev, d_dev = q.cuda().requires_grad_(True), d.cuda().requires_grad_(True)
    got = fused_maxsim(q_dev, qm.cuda(), d_dev, dm.cuda())
    got.backward(grad_out.cuda())
    for mine, ref in ((got, expected), (q_dev.grad, q_ref.grad), (d_dev.grad, d_ref.grad)):
        torch.testing.assert_close(mine.detach().cpu(), ref.detach(), rtol=1e-10, atol=1e-10)
