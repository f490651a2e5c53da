#!/usr/bin/env python3
"""Joins each model folder's torch.json (tools/gpu/ref.py) and ours.json (gpu_check) into one
Markdown table and checks the f32 tolerance.

    table.py DEVICE SIZE DIR...

f32 rows pass when max abs error <= TOL * max |reference| (TOL = 1e-3, $GPU_CHECK_TOL);
half rows list torch's half-precision time and its own error against torch f32 (ours runs
f32 only for now). Exit status 1 when a model failed or an f32 row is out of tolerance.
"""
import json
import os
import sys
from pathlib import Path

TOL = float(os.environ.get("GPU_CHECK_TOL", "1e-3"))


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    device, size, dirs = sys.argv[1], sys.argv[2], [Path(d) for d in sys.argv[3:]]
    lines = ["| model | precision | max abs | max rel | abs / max\\|ref\\| | ours ms | torch ms | ours/torch | |",
             "|---|---|---|---|---|---|---|---|---|"]
    bad = 0
    gpu = None
    for d in dirs:
        name = d.name.split("-", 1)[1]
        if (d / "failed").exists():
            lines.append(f"| {name} | — | — | — | — | — | — | — | FAILED: {(d / 'failed').read_text().strip()[:120]} |")
            bad += 1
            continue
        torch_rows = json.loads((d / "torch.json").read_text())
        gpu = gpu or torch_rows.get("gpu")
        ours = {(r["name"], r["precision"]): r for r in json.loads((d / "ours.json").read_text())["rows"]}
        for t in torch_rows["rows"]:
            o = ours.get((t["name"], t["precision"]))
            tm = t.get("torch_ms")
            if o is not None:
                scaled = o["max_abs"] / max(o["ref_max_abs"], 1e-12)
                ok = scaled <= TOL
                bad += not ok
                lines.append(f"| {t['name']} | {t['precision']} | {o['max_abs']:.2e} | {o['max_rel']:.2e} | "
                             f"{scaled:.1e} | {o['ours_ms']:.2f} | {fmt(tm, '.2f')} | "
                             f"{fmt(o['ours_ms'] / tm if tm else None, '.2f')} | {'ok' if ok else 'OUT OF TOLERANCE'} |")
            elif "error" in t:
                lines.append(f"| {t['name']} | {t['precision']} | — | — | — | — | — | — | {t['error'][:100]} |")
            else:
                lines.append(f"| {t['name']} | {t['precision']} (torch only) | "
                             f"{fmt(t.get('torch_half_vs_f32_abs'), '.2e')} | {fmt(t.get('torch_half_vs_f32_rel'), '.2e')} | — | — | "
                             f"{fmt(tm, '.2f')} | — | torch half vs torch f32; ours half not wired |")
    print(f"\nGPU check: device {device}{' (' + gpu + ')' if gpu else ''}, size {size}, "
          f"f32 tolerance max abs <= {TOL:g} x max|ref|")
    print("\n".join(lines))
    print(f"\n{'ALL OK' if not bad else f'{bad} FAILED OR OUT OF TOLERANCE'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
