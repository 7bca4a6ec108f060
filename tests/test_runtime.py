"""The runtime's precision choice: what --precision auto picks on each kind of hardware, and a bf16 step on the CPU
against the same step in fp32."""
import math
import os
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import runtime
from cli import UserError
from methods import MoCo
from run_options import default_options
from training import build_model, train_epoch

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's precision choice")


@cpu_only
@pytest.mark.parametrize("amx", [False, True])
def test_auto_picks_bf16_on_a_cpu_only_where_it_has_amx(monkeypatch, amx):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert runtime.setup_runtime("auto").precision == ("bf16" if amx else "fp32")
    assert runtime.setup_runtime("fp32").precision == "fp32"  # an explicit choice is kept
    assert runtime.setup_runtime("bf16").precision == "bf16"


def cpu_flags():
    """The x86 CPU's flags as Linux reports them; None elsewhere (ARM's /proc/cpuinfo has `Features`, not `flags`)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() and platform.machine() in ("x86_64", "AMD64") else []
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), None)


@pytest.mark.skipif(cpu_flags() is None, reason="reads an x86 CPU's model from Linux")
def test_a_cpu_run_names_the_cpu_model_not_only_its_cores():
    """It read `CPU (2 cores)` on an Intel Xeon and on an AMD EPYC that trained at half its speed."""
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name"))
    assert runtime.hardware_name(runtime.setup_runtime("fp32")) == f"{model} ({os.cpu_count()} cores)"


@pytest.mark.skipif(cpu_flags() is None, reason="reads an x86 CPU's flags from Linux")
def test_the_amx_check_agrees_with_the_cpu_flags_linux_reports():
    assert runtime.cpu_has_amx() == ("amx_tile" in cpu_flags())


@cpu_only
def test_fp16_on_a_cpu_is_refused_with_what_to_use_instead():
    with pytest.raises(UserError, match="--precision fp16 needs a CUDA GPU; on CPU use bf16, fp32 or auto"):
        runtime.setup_runtime("fp16")


def one_moco_step(precision, batch):
    """One training step of a small MoCo (the CPU recipe's net, width 0.25) on `batch` from the same initial weights:
    (the step's loss, the change it made to the weights, the dtype the first convolution computed in)."""
    rt = runtime.Runtime(torch.device("cpu"), precision, normalize=((0.5,) * 3, (0.25,) * 3))
    torch.manual_seed(0)
    # no weight decay: its term of the update is the same in both precisions and would hide their difference
    model, optimizer = build_model(rt, MoCo, default_options(MoCo, width=0.25, moco_k=256), 10, True, 2, "sgd", 0.06, 0)
    weights = lambda: torch.cat([p.detach().flatten() for p in model.encoder_q.parameters()])
    before, dtypes = weights(), []
    model.backbone.conv1.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    loss, *_ = train_epoch(rt, model, model, [batch], optimizer, lambda t: 0.06, 0, 1)
    return loss, weights() - before, dtypes[0]


def test_a_bf16_step_on_the_cpu_gives_the_fp32_step_s_loss_and_update():
    generator = torch.Generator().manual_seed(1)
    batch = ([torch.randint(0, 256, (32, 3, 28, 28), dtype=torch.uint8, generator=generator) for _ in range(2)],
             torch.zeros(32, dtype=torch.long))
    loss_fp32, update_fp32, dtype_fp32 = one_moco_step("fp32", batch)
    loss_bf16, update_bf16, dtype_bf16 = one_moco_step("bf16", batch)
    assert (dtype_fp32, dtype_bf16) == (torch.float32, torch.bfloat16)  # autocast really ran the convolutions in bf16
    assert math.isfinite(loss_bf16) and loss_bf16 == pytest.approx(loss_fp32, rel=0.01)  # InfoNCE at K 256: ~ln(257)
    assert torch.isfinite(update_bf16).all() and update_bf16.norm() > 0
    assert F.cosine_similarity(update_bf16, update_fp32, dim=0) > 0.95
    assert update_bf16.norm() == pytest.approx(update_fp32.norm().item(), rel=0.1)


def test_auto_precision_on_a_gpu_with_emulated_bf16_only_is_fp16(monkeypatch):
    """A V100 or T4: torch.cuda.is_bf16_supported() says True by default because bf16 can be emulated there."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert runtime.auto_precision(torch.device("cuda")) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # an A100, an H100
    assert runtime.auto_precision(torch.device("cuda")) == "bf16"


def test_a_resume_in_fp16_takes_an_fp32_checkpoint_s_empty_scaler_state():
    fp32, fp16 = (runtime.Runtime(torch.device("cpu"), precision) for precision in ("fp32", "fp16"))
    assert fp32.scaler.state_dict() == {}  # what a disabled scaler saves
    fp16.load_scaler(fp32.scaler.state_dict())  # GradScaler.load_state_dict raises on it
    assert fp16.scaler.is_enabled() and fp16.scaler.get_scale() == 2.0**16  # its own fresh scale
    fp16.scaler.scale(torch.ones(()))  # the scale is made at its first use
    fp16.scaler.update(1024.0)
    restored = runtime.Runtime(torch.device("cpu"), "fp16")
    restored.load_scaler(fp16.scaler.state_dict())
    assert restored.scaler.get_scale() == 1024.0


def test_a_checkpoint_with_rank_0_s_rng_state_alone_still_resumes():
    rt = runtime.Runtime(torch.device("cpu"), "fp32")
    torch.manual_seed(5)
    (state,) = runtime.rng_states(rt)
    expected = torch.rand(3)
    torch.manual_seed(6)
    runtime.set_rng_states(rt, state)  # format-2 checkpoints before the per-rank list held one dict
    assert torch.equal(torch.rand(3), expected)
