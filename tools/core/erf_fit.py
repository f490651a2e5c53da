#!/usr/bin/env python3
"""Fits the coefficients of the f32 `erf` used by `cielr_core::activation` and prints them
as Rust constants, followed by an f32 simulation of the kernel's arithmetic.

The kernel (crates/cielr-core/src/activation.rs) computes, for t = |x|:
  * t < SPLIT:  erf(x) = x * A(x^2),                      A a polynomial of degree 5;
  * t >= SPLIT: erf(x) = sign(x) * (1 - exp(-t^2) * N(u) / D(u)),  u = min(t, G_MAX),
                N, D quadratics, D(0) = 1, fitted to erfcx(t) = exp(t^2) erfc(t).
Both fits minimise the maximum *absolute* error of erf (for the tail: |erfcx - N/D| weighted
by exp(-t^2)) with Lawson's iteratively reweighted least squares in float64; the tail's
rational is linearised (N - erfcx * D = 0) and reweighted by 1/D each step.

Run: /work/venv-ref/bin/python tools/core/erf_fit.py   (numpy + scipy; ~10 s)
"""
import numpy as np
from scipy.special import erf, erfcx

SPLIT = 0.9
G_MAX = 4.0
DEG_A = 5
DEG_N, DEG_D = 2, 2
F32 = np.float32


def lawson(a, f, w_abs, iters=200):
    """min over c of max |w_abs * (a @ c - f)|, approached by Lawson's IRLS."""
    lw = np.ones(len(f))
    best = None
    for _ in range(iters):
        w = np.sqrt(lw) * w_abs
        c, *_ = np.linalg.lstsq(a * w[:, None], f * w, rcond=None)
        err = (a @ c - f) * w_abs
        e = np.abs(err).max()
        if best is None or e < best[0]:
            best = (e, c)
        lw = lw * np.abs(err) + 1e-300
        lw /= lw.sum()
    return best


def fit_small():
    """erf(x) = x * sum_k a_k x^(2k) on [0, SPLIT], absolute error."""
    x = np.linspace(0.0, SPLIT, 40001)[1:]
    s = x * x
    a = np.stack([x * s**k for k in range(DEG_A + 1)], 1)
    return lawson(a, erf(x), np.ones_like(x))


def fit_tail(iters=60):
    """erfcx(t) = N(t) / D(t) on [SPLIT, G_MAX], error weighted by exp(-t^2)."""
    t = np.linspace(SPLIT, G_MAX, 40001)
    g = erfcx(t)
    w_abs = np.exp(-t * t)
    a = np.concatenate(
        [
            np.stack([t**k for k in range(DEG_N + 1)], 1),
            np.stack([-g * t**k for k in range(1, DEG_D + 1)], 1),
        ],
        1,
    )
    lw = np.ones_like(t)
    inv_d = np.ones_like(t)
    best = None
    for _ in range(iters):
        w = np.sqrt(lw) * inv_d * w_abs
        c, *_ = np.linalg.lstsq(a * w[:, None], g * w, rcond=None)
        n = c[: DEG_N + 1]
        d = np.concatenate([[1.0], c[DEG_N + 1 :]])
        dv = np.polyval(d[::-1], t)
        err = (np.polyval(n[::-1], t) / dv - g) * w_abs
        e = np.abs(err).max()
        if best is None or e < best[0]:
            best = (e, n, d, dv.min())
        inv_d = 1.0 / np.abs(dv)
        lw = lw * np.abs(err) + 1e-300
        lw /= lw.sum()
    return best


def horner(coefs, v):
    acc = np.full_like(v, coefs[-1])
    for c in coefs[-2::-1]:
        acc = acc * v + c
    return acc


def simulate(a, n, d, x):
    """The kernel's arithmetic in float32 (numpy rounds each op; exp is numpy's)."""
    t = np.abs(x)
    s = t * t
    small = x * horner(a, s)
    u = np.minimum(t, F32(G_MAX))
    tail = F32(1) - np.exp(-s) * (horner(n, u) / horner(d, u))
    tail = np.copysign(tail, x)
    return np.where(t < F32(SPLIT), small, tail)


def main():
    e_a, a = fit_small()
    e_t, n, d, d_min = fit_tail()
    print(f"// fit: small |err| <= {e_a:.3e}, tail |err| <= {e_t:.3e} (min D = {d_min:.3f})")
    a32, n32, d32 = a.astype(F32), n.astype(F32), d.astype(F32)
    for name, cs in (("ERF_A", a32), ("ERF_N", n32), ("ERF_D", d32)):
        body = ", ".join(np.format_float_positional(c, unique=True, trim="0") for c in cs)
        print(f"const {name}: [f32; {len(cs)}] = [{body}];")
    # Every 37th f32 bit pattern in [0, 5] (odd function: the sign is exact).
    bits = np.arange(0, np.float32(5.0).view(np.uint32), 37, dtype=np.uint32)
    x = bits.view(F32)
    y = simulate(a32, n32, d32, x).astype(np.float64)
    err = np.abs(y - erf(x.astype(np.float64)))
    i = err.argmax()
    print(f"// float32 simulation: max |erf_f32 - erf| = {err.max():.3e} at x = {x[i]!r}")


if __name__ == "__main__":
    main()
