"""The process's runtime: device, precision (autocast and the fp16 loss scaler), torchrun's process group, uint8 ->
normalised batches on the device, seeding and RNG state for exact resume, and what a results row says of the
machine (hardware, git commit)."""
import os
import random
import subprocess
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from cli import UserError


@dataclass
class Runtime:
    device: torch.device
    precision: str          # fp32 | fp16 | bf16
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False
    normalize: tuple = None  # (mean, std) in [0, 1] units: what to_device applies to uint8 image batches

    def __post_init__(self):
        # Loss scaling only for fp16: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        if self.normalize is not None:  # as albumentations' Normalize(max_pixel_value=255): (x - 255·mean) / (255·std)
            mean, std = (torch.tensor(v, dtype=torch.float64).view(1, -1, 1, 1) * 255 for v in self.normalize)
            self._shift, self._scale = mean.float().to(self.device), (1 / std).float().to(self.device)

    def load_scaler(self, state):
        """The fp16 loss scaler's state from a checkpoint: an fp32 or bf16 run saved a disabled scaler's empty state,
        and a resume in fp16 starts its scaler afresh from it."""
        if state:
            self.scaler.load_state_dict(state)

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world_size > 1

    def autocast(self):
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)

    def to_device(self, images):
        """Move a batch (or a list of view batches) to the device, in channels_last when enabled.

        The loaders deliver uint8 images: they become normalised float32 here, on the device, so the workers skip
        the per-image float work and the batch is 4x fewer bytes through shared memory, pinning and the copy.
        Float batches (a transform that normalised already) are moved as they are.
        """
        if isinstance(images, (list, tuple)):
            return [self.to_device(x) for x in images]
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True, memory_format=fmt)
        if images.dtype != torch.uint8:
            return images
        if self.normalize is None:
            raise ValueError("a uint8 image batch needs Runtime.normalize = (mean, std)")
        return images.float().sub_(self._shift).mul_(self._scale)


def setup_runtime(precision="auto", seed=0, channels_last=True, normalize=None):
    """Device and precision for this process; joins the torchrun process group when launched by torchrun.
    normalize: the dataset's (mean, std), applied on the device to the loaders' uint8 batches."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    if precision == "auto":
        precision = auto_precision(device)
    elif precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16 needs a CUDA GPU; on CPU use bf16, fp32 or auto")
    seed_everything(seed + rank)
    return Runtime(device, precision, rank, world_size, channels_last and device.type == "cuda", normalize)


def auto_precision(device):
    """--precision auto: bf16 autocast on a GPU that has it (fp16 + loss scaling on one that does not); on a CPU, bf16
    where the cores have AMX, on which BENCHMARKS.md measured the CPU recipe's step and its learning, fp32 elsewhere
    (a CPU with only AVX512-BF16 is unmeasured: --precision bf16 asks for it)."""
    if device.type == "cuda":
        # torch's default counts emulation: a V100 or T4 "supports" bf16 at a fraction of its fp16 speed
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_has_amx() else "fp32"


def cpu_has_amx():
    """Whether this CPU has AMX (Intel Sapphire Rapids and later), the tile units oneDNN's bf16 kernels run on."""
    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rng_states(rt):
    """Every process's RNG state in rank order (a collective: every rank calls it). Each process is seeded seed + rank
    and makes its own draws in a step (--mix's pairs and λ, MoChi's hard negatives; the crops are keyed by seed, epoch
    and image instead), so a resume that gave every rank rank 0's state would make those draws the same on every rank."""
    if not rt.distributed:
        return [rng_state()]
    states = [None] * rt.world_size
    dist.all_gather_object(states, rng_state())
    return states


def set_rng_states(rt, states):
    """Each process takes back its own rank's state. Checkpoints written before the per-rank list hold rank 0's state
    alone; a rank the checkpoint has no state for (or a resume on more processes) keeps its fresh seed + rank stream."""
    states = states if isinstance(states, list) else [states]
    if rt.rank < len(states):
        set_rng_state(states[rt.rank])


def peak_gpu_memory_gb(rt):
    return torch.cuda.max_memory_allocated(rt.device) / 2**30 if rt.device.type == "cuda" else None


def hardware_name(rt):
    if rt.device.type == "cuda":
        return f"{rt.world_size}x {torch.cuda.get_device_name(rt.device)}"
    return f"{cpu_name()} ({os.cpu_count()} cores)" + (f" x{rt.world_size} processes" if rt.distributed else "")


def cpu_name():
    """The CPU's model as Linux names it: two 2-core machines of the same kind ran a run at speeds 2x apart."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None) or "CPU"


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
