"""Device helpers shared by the GPU harness's torch side (ref.py, e2e_torch.py)."""

import torch


def sync(dev):
    """Waits for the queued work on `dev` (a no-op on the CPU)."""
    if dev.type == "cuda":
        torch.cuda.synchronize()


def on_device(dev, make):
    """`make()` with `dev` as torch's default device: random init on the accelerator takes
    seconds instead of minutes at full size.  Where that fails, `make()` as is (on the CPU)."""
    try:
        with torch.device(dev):
            return make()
    except Exception:
        return make()
