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
from training import default_options, setup_runtime

rt = setup_runtime("fp32", seed=0)
rank, world = rt.rank, rt.world_size
b = 4

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
model = MoCo(default_options(MoCo, moco_dim=8, moco_k=16, bn_splits=1), 10, True, 1)
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

dist.destroy_process_group()
print(f"rank {rank}: ddp checks passed")
