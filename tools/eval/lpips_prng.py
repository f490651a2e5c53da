"""The deterministic random SqueezeNet 1.1 weights used by cielr-eval's LPIPS parity test.

torchvision cannot download the real ImageNet weights here, and the random features (~2.9 MB
in f32) are too big to commit, so the test's backbone weights come from this documented
generator, re-implemented bit for bit in `crates/cielr-eval/tests/lpips_parity.rs`:

* one SplitMix64 stream seeded with `SEED`; value `i` of the stream (i = 0, 1, ...) is
  `z = SEED + (i + 1) * 0x9E3779B97F4A7C15 (mod 2^64)`,
  `z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9`, `z = (z ^ (z >> 27)) * 0x94D049BB133111EB`,
  `z ^= z >> 31`, and `u = (z >> 40) * 2^-24` (an f32 in [0, 1), exact);
* each tensor, in the order of `TENSORS` (torchvision's `features` state-dict order), takes
  the next `numel` values as `(u * 2 - 1) * bound` in f32, with
  `bound = f32(sqrt(6 / fan_in))` for weights (He-uniform) and `f32(1 / sqrt(fan_in))` for
  biases, `fan_in = in_channels * k * k`.
"""
import numpy as np

SEED = 20261127
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)

# (features index, sub-module or None, in, out, kernel) for every convolution.
FIRE = [(3, 64, 16, 64), (4, 128, 16, 64), (6, 128, 32, 128), (7, 256, 32, 128),
        (9, 256, 48, 192), (10, 384, 48, 192), (11, 384, 64, 256), (12, 512, 64, 256)]


def convs():
    out = [("features.0", 3, 64, 3)]
    for idx, cin, sq, ex in FIRE:
        out.append((f"features.{idx}.squeeze", cin, sq, 1))
        out.append((f"features.{idx}.expand1x1", sq, ex, 1))
        out.append((f"features.{idx}.expand3x3", sq, ex, 3))
    return out


def tensors():
    """(name, shape, bound) in generation order."""
    out = []
    for name, cin, cout, k in convs():
        fan_in = cin * k * k
        out.append((f"{name}.weight", (cout, cin, k, k), np.float32(np.sqrt(6.0 / fan_in))))
        out.append((f"{name}.bias", (cout,), np.float32(1.0 / np.sqrt(fan_in))))
    return out


def stream(start, n):
    i = np.arange(start + 1, start + n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(SEED) + i * GOLDEN
        z = (z ^ (z >> np.uint64(30))) * M1
        z = (z ^ (z >> np.uint64(27))) * M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)


def state_dict():
    """name -> float32 numpy array, torchvision `features` names."""
    out, pos = {}, 0
    for name, shape, bound in tensors():
        n = int(np.prod(shape))
        u = stream(pos, n)
        pos += n
        out[name] = ((u * np.float32(2.0) - np.float32(1.0)) * bound).reshape(shape)
    return out
