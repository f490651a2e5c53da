#!/usr/bin/env python3
"""Joins each model folder's torch.json (tools/gpu/ref.py) and ours.json / ours-<half>.json
(gpu_check) into one Markdown table and checks the f32 tolerance.

    table.py DEVICE SIZE DIR...

f32 rows pass when max abs error <= TOL * max |reference| (TOL = 1e-3, $GPU_CHECK_TOL).
Half rows (fp16 on CUDA, bf16 on CPU: the same dtype on both sides) give our half output's
error against the torch f32 reference, our and torch's half times, and torch's own half error
against its f32 output for scale; a non-finite half output fails, an error more than
HALF_WARN (10) times torch's is marked HIGH (not a failure: half error depends on the
model's value ranges, this is a measurement).  A half row that did not run says why
("not run: ..."), from the folder's `ours-half-failed`.  Time-only rows (`e2e`: no outputs
compared) list our stage times beside torch's f32 time of the same stage
(tools/gpu/e2e_torch.py).  Exit status 1 when a model failed, an f32 row is out of tolerance
or a half output is non-finite.
"""
import json
import os
import sys
from pathlib import Path

TOL = float(os.environ.get("GPU_CHECK_TOL", "1e-3"))
HALF_WARN = 10.0
SHORT = {"float16": "f16", "bfloat16": "bf16", "f32": "f32", "f16": "f16", "bf16": "bf16"}


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def time_only_rows(torch_meta, ours, half_failed):
    """The `e2e` lines: each of our time-only rows (f32, then half), beside torch's time for the
    same stage in f32 (tools/gpu/e2e_torch.py) when there is one."""
    torch_rows = {t["name"]: t for t in torch_meta["rows"] if t.get("time_only")}
    rows = sorted((r for r in ours.values() if r.get("time_only")),
                  key=lambda r: SHORT.get(r["precision"], r["precision"]) != "f32")
    if not rows:
        return ["| e2e | — | — | — | — | — | — | — | FAILED: no time-only rows from ours |"]
    lines = []
    for r in rows:
        prec = SHORT.get(r["precision"], r["precision"])
        t = torch_rows.get(r["name"], {}) if prec == "f32" else {}
        om, tm = r.get("ours_ms"), t.get("torch_ms")
        ratio = fmt(om / tm if (om is not None and tm) else None, ".2f")
        notes = [f"ours: {r.get('note', '')}"]
        if t.get("torch_cold_ms") is not None:
            notes.append(f"torch cold pass {t['torch_cold_ms']:.0f} ms")
        if t.get("note"):
            notes.append(f"torch: {t['note']}")
        if prec == "f32" and tm is None and not t.get("note"):
            why = next((x.get("note") for x in torch_rows.values() if x.get("note")), None)
            notes.append(f"no torch time{': ' + why if why else ''}")
        if prec != "f32":
            notes.append("torch not timed in half")
        lines.append(f"| {r['name']} | {prec} | — | — | — | {fmt(om, '.1f')} | {fmt(tm, '.1f')} | {ratio} | "
                     f"time only, random weights; {'; '.join(notes)} |")
    if half_failed and not any(SHORT.get(r["precision"]) != "f32" for r in rows):
        lines.append(f"| e2e | half | — | — | — | — | — | — | ours not run: {half_failed[:100]} |")
    return lines


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
        torch_meta = json.loads((d / "torch.json").read_text())
        gpu = gpu or torch_meta.get("gpu")
        ours = {}
        for f in sorted(d.glob("ours*.json")):
            for r in json.loads(f.read_text())["rows"]:
                ours[(r["name"], SHORT.get(r["precision"], r["precision"]))] = r
        half_failed = (d / "ours-half-failed").read_text().strip() if (d / "ours-half-failed").exists() else None
        time_only_done = False
        for t in torch_meta["rows"]:
            prec = SHORT.get(t["precision"], t["precision"])
            if t.get("time_only"):
                if time_only_done:
                    continue
                time_only_done = True
                lines += time_only_rows(torch_meta, ours, half_failed)
                if not any(r.get("time_only") for r in ours.values()):
                    bad += 1
                continue
            o = ours.get((t["name"], prec))
            if o is None and prec != "f32":
                # Ours ran in another half dtype (check.sh HALF_PRECISION): still compared.
                o = next((r for (n, p), r in ours.items()
                          if n == t["name"] and p != "f32" and not r.get("time_only")), None)
            shown = SHORT.get(o["precision"], o["precision"]) if o is not None else prec
            tm = t.get("torch_ms")
            if o is not None:
                om = o.get("ours_ms")
                finite = o.get("max_abs") is not None
                scaled = o["max_abs"] / max(o["ref_max_abs"], 1e-12) if finite else float("inf")
                ratio = fmt(om / tm if (om is not None and tm) else None, ".2f")
                ma = fmt(o.get("max_abs"), ".2e") if finite else "non-finite"
                mr = fmt(o.get("max_rel"), ".2e") if finite else "non-finite"
                om_s = fmt(om, ".2f") if om is not None else "(above)"
                tm_s = fmt(tm, ".2f") if tm is not None else ("(above)" if om is None else "—")
                if prec == "f32":
                    ok = scaled <= TOL
                    bad += not ok
                    note = "ok" if ok else "OUT OF TOLERANCE"
                else:
                    ta = t.get("torch_half_vs_f32_abs")
                    tscaled = ta / max(o["ref_max_abs"], 1e-12) if (ta is not None and finite) else None
                    bad += not finite
                    high = finite and tscaled is not None and scaled > HALF_WARN * max(tscaled, 1e-7)
                    torch_half = (t["error"][:90] if "error" in t else
                                  f"torch {prec} vs torch f32: abs {fmt(ta, '.2e')} ({fmt(tscaled, '.1e')} of max\\|ref\\|)")
                    note = ("NON-FINITE " if not finite else "HIGH " if high else "") + \
                        f"ours {shown} vs f32 ref; {torch_half}"
                lines.append(f"| {t['name']} | {shown} | {ma} | {mr} | {scaled:.1e} | {om_s} | {tm_s} | {ratio} | {note} |")
            elif "error" in t:
                lines.append(f"| {t['name']} | {prec} | — | — | — | — | — | — | {t['error'][:100]} |")
            elif prec == "f32":
                lines.append(f"| {t['name']} | f32 | — | — | — | — | {fmt(tm, '.2f')} | — | FAILED: no row from ours |")
                bad += 1
            else:
                why = half_failed or "ours half not run (check.sh --no-half)"
                lines.append(f"| {t['name']} | {prec} (torch only) | "
                             f"{fmt(t.get('torch_half_vs_f32_abs'), '.2e')} | {fmt(t.get('torch_half_vs_f32_rel'), '.2e')} | — | — | "
                             f"{fmt(tm, '.2f')} | — | torch half vs torch f32; ours not run: {why[:100]} |")
    print(f"\nGPU check: device {device}{' (' + gpu + ')' if gpu else ''}, size {size}, "
          f"f32 tolerance max abs <= {TOL:g} x max|ref|")
    print("\n".join(lines))
    print(f"\n{'ALL OK' if not bad else f'{bad} FAILED OR OUT OF TOLERANCE'}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
