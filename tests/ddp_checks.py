"""Run by tests/test_distributed.py under `torchrun --nproc_per_node=2` (CPU, gloo); exits non-zero on a failure."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.distributed as dist
import torch.nn.functional as F

from evaluation import interleave_shards
from losses import nt_xent
from methods import MoCo
from models import gather_all
from run_options import default_options
from runtime import rng_states, set_rng_states, setup_runtime

rt = setup_runtime("fp32", seed=0)
rank, world = rt.rank, rt.world_size
b = 4

# Resume: each rank takes back its own RNG state (a resume used to give every rank rank 0's, so all drew the same crops).
torch.manual_seed(30 + rank)
saved = rng_states(rt)
expected = torch.rand(4)
torch.manual_seed(99)  # a fresh process, seeded the same on every rank
set_rng_states(rt, saved)
resumed = torch.rand(4)
assert torch.equal(resumed, expected), "a rank did not get its own RNG state back"
draws = [torch.zeros(4) for _ in range(world)]
dist.all_gather(draws, resumed)
assert not torch.equal(draws[0], draws[1]), "the ranks draw the same numbers after a resume"

# SimCLR: 2 processes × batch b give the loss and gradients of 1 process × batch 2b.
torch.manual_seed(1)
head = torch.nn.Linear(6, 5)
x1, x2 = torch.randn(world * b, 6), torch.randn(world * b, 6)
mine = slice(rank * b, (rank + 1) * b)
full_loss = nt_xent(head(x1), head(x2), 0.5)
full_grad = torch.autograd.grad(full_loss, head.weight)[0]
loss = nt_xent(gather_all(head(x1[mine]), with_grad=True), gather_all(head(x2[mine]), with_grad=True), 0.5)
grad = torch.autograd.grad(loss, head.weight)[0]
dist.all_reduce(grad)
grad /= world  # what DDP does to parameter gradients
assert torch.allclose(loss, full_loss, atol=1e-6), (loss, full_loss)
assert torch.allclose(grad, full_grad, atol=1e-6), (grad - full_grad).abs().max()

# Evaluation: rank-strided shards come back in dataset order.
n = 7
shard = torch.arange(rank, n, world).float()
assert torch.equal(interleave_shards(shard), torch.arange(n).float())

# MoCo under DDP: after one step the queue holds the keys of both processes, in rank order.
torch.manual_seed(0)
model = MoCo(default_options(MoCo, moco_dim=8, moco_k=16, bn_splits=1, width=0.25), 10, True, 1)
ddp = torch.nn.parallel.DistributedDataParallel(model)
model.eval()  # running-stat BN: a key depends on its image only, so it can be recomputed here
torch.manual_seed(10 + rank)
views = [torch.randn(b, 3, 32, 32) for _ in range(2)]
ddp(views)
with torch.no_grad():
    expected = torch.cat([F.normalize(model.encoder_k(v), dim=1) for v in [gather_all(views[1])]])
assert torch.allclose(model.queue[:world * b], expected, atol=1e-5), "queue does not hold both ranks' keys"
assert model.queue_ptr.item() == world * b

# Weights stay identical across processes after several steps on different data.
model.train()
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for step in range(3):
    loss = ddp([torch.randn(b, 3, 32, 32) for _ in range(2)])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
checksum = torch.stack([p.detach().double().sum() for p in model.parameters()])
gathered = [torch.zeros_like(checksum) for _ in range(world)]
dist.all_gather(gathered, checksum)
assert all(torch.equal(g, gathered[0]) for g in gathered), "weights differ across ranks"

# BYOL, SimSiam and SwAV: 2 processes x b give the loss and gradients of 1 process x 2b. BatchNorm normalises over each
# process's own batch (as the papers' code does without SyncBN), so a train-mode BN makes 2 x b a different computation
# from 2b by design; the comparison runs BN on running statistics (eval mode), where each image's loss depends on its
# own views only. Then the per-process mean losses average to the full batch's mean and DDP's averaged gradients equal
# the full batch's; for SwAV this also needs the distributed Sinkhorn, whose sums run over both processes' scores, to
# give each half the codes it has in the full batch (the one-process reference runs its Sinkhorn locally).
from methods import BYOL, SimSiam, SwAV  # noqa: E402

narrow = {BYOL: dict(proj_hidden=32, proj_dim=16, pred_hidden=32), SimSiam: dict(proj_dim=16, pred_hidden=8),
          SwAV: dict(proj_hidden=32, proj_dim=16, prototypes=12, queue_length=0)}
for method, overrides in narrow.items():
    options = default_options(method, bn_splits=1, width=0.25, **overrides)
    torch.manual_seed(0)
    model = method(options, 10, True, 1).eval()
    torch.manual_seed(0)
    full = method(options, 10, True, 1).eval()
    if method is SwAV:
        assert model.world == world and full.world == world
        full.world, full.rank = 1, 0
    torch.manual_seed(20)  # the same 2b images on every rank
    views = [torch.randn(world * b, 3, 16, 16) for _ in range(2)]
    full_loss = full(views)
    full_grads = torch.autograd.grad(full_loss, full.trainable_parameters())
    ddp = torch.nn.parallel.DistributedDataParallel(model)  # held: its hooks average the gradients in backward
    loss = ddp([v[mine] for v in views])
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    assert torch.allclose(mean_loss, full_loss, atol=1e-5), (method.name, mean_loss, full_loss)
    for p, g in zip(model.trainable_parameters(), full_grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), (method.name, (p.grad - g).abs().max())

# Mixing (--mix): each process mixes within its own batch. Given the same pairs and λ (the full batch's permutation
# made of the processes' own permutations, shifted to their rows), 2 processes x b give the loss and gradients of
# 1 process x 2b for SimCLR's i-Mix (N-pair over every process's projections, virtual labels shifted by the rank),
# BYOL, SimSiam and SwAV (each mixed image's loss depends on its two sources only; eval-mode BN as above), Mixup and
# CutMix alike. Not for MoCo's i-Mix, whose virtual labels run over the process's own keys (kibok90/imix's per-GPU
# form), and not for the draws themselves: Un-Mix's reverse order and i-Mix's random permutation pair images within a
# process, so the pairs of 2 x b are never those of one 2b batch.
import methods  # noqa: E402
from mixing import Draw  # noqa: E402

torch.manual_seed(30)  # the same draws on every rank
perms = [torch.randperm(b) for _ in range(world)]
lam = torch.rand(world * b)
box = (0.25, 0.125, 0.5, 0.5)
cases = [(methods.SimCLR, "imix", False, dict(projection_dim=16)), (methods.SimCLR, "unmix", True, dict(projection_dim=16)),
         (BYOL, "imix", False, narrow[BYOL]), (BYOL, "unmix", False, narrow[BYOL]), (BYOL, "unmix", True, narrow[BYOL]),
         (SimSiam, "imix", False, narrow[SimSiam]), (SimSiam, "unmix", True, narrow[SimSiam]),
         (SwAV, "imix", False, narrow[SwAV]), (SwAV, "unmix", True, narrow[SwAV])]
for method, kind, cutmix, overrides in cases:
    options = default_options(method, bn_splits=1, width=0.25, mix=kind, mix_alpha=1.0, **overrides)
    torch.manual_seed(0)
    model = method(options, 10, True, 1).eval()
    torch.manual_seed(0)
    full = method(options, 10, True, 1).eval()
    shared_lam = lam[:1].expand(world * b) if kind == "unmix" else lam  # Un-Mix: one λ per batch
    model.draw_mix = lambda images: Draw(perms[rank], shared_lam[mine], cutmix, box)
    full.draw_mix = lambda images: Draw(torch.cat([p + r * b for r, p in enumerate(perms)]), shared_lam, cutmix, box)
    if method is SwAV:
        assert model.world == world and full.world == world
        full.world, full.rank = 1, 0
    torch.manual_seed(20)
    views = [torch.randn(world * b, 3, 16, 16) for _ in range(2)]
    gather = methods.gather_all
    methods.gather_all = lambda x, with_grad=False: x  # the reference is one process: SimCLR gathers nothing
    full_loss = full(views)
    methods.gather_all = gather
    full_grads = torch.autograd.grad(full_loss, full.trainable_parameters())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    loss = ddp([v[mine] for v in views])
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    mean_loss /= world
    case = f"{method.name} --mix {kind}{' (CutMix)' if cutmix else ''}"
    assert torch.allclose(mean_loss, full_loss, atol=1e-5), (case, mean_loss, full_loss)
    for p, g in zip(model.trainable_parameters(), full_grads):
        assert torch.allclose(p.grad, g, rtol=1e-4, atol=1e-6), (case, (p.grad - g).abs().max())

dist.destroy_process_group()
print(f"rank {rank}: ddp checks passed")
