//! Reports, all recomputed from `OUT/samples.jsonl` and `OUT/run.json` (so shards are merged
//! by concatenating their samples): `summary.json`, `samples.csv`, `summary.md` and a
//! static, self-contained `index.html` (thumbnails side by side, plan and trace per sample,
//! an SVG histogram per metric).
//!
//! `summary.json` is `{"dataset", "samples", "failed", "metrics": {...}, ...}`: `metrics`
//! holds the means of the best-of-N run per sample (the authors' protocol; with one sample
//! per image it is the first sample), over the samples that have the metric (failed
//! samples are counted in `failed` and skipped, as the authors do); `first_sample` holds the
//! first run's means and failures (what a user gets); a metric that could not be computed
//! is absent from `metrics` and its reason is in `absent`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::error::{EvalError, EvalResult};
use crate::runner::{read_samples, RunInfo, SampleRecord, RUN_FILE, SAMPLES_FILE};

/// Means and counts of each metric over the samples that have it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricMeans {
    /// Mean per metric.
    pub means: BTreeMap<String, f64>,
    /// Samples that contributed per metric.
    pub counts: BTreeMap<String, usize>,
}

fn means<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, f64>>) -> MetricMeans {
    let mut sums: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for m in maps {
        for (k, v) in m {
            if v.is_finite() {
                let e = sums.entry(k.clone()).or_default();
                e.0 += v;
                e.1 += 1;
            }
        }
    }
    MetricMeans {
        means: sums
            .iter()
            .map(|(k, (s, n))| (k.clone(), s / *n as f64))
            .collect(),
        counts: sums.into_iter().map(|(k, (_, n))| (k, n)).collect(),
    }
}

/// The summary of a run (the content of `summary.json`).
pub fn summarize(info: &RunInfo, records: &[SampleRecord]) -> Value {
    let failed = records.iter().filter(|r| !r.ok()).count();
    let best = means(records.iter().filter_map(|r| r.best.as_ref()));
    let first = means(records.iter().filter_map(|r| r.first.as_ref()));
    let first_failed = records.iter().filter(|r| r.first.is_none()).count();
    let fallbacks = records.iter().filter(|r| r.best_note.is_some()).count();
    let mut absent: BTreeMap<String, String> = info.absent.clone();
    // Metrics the run computes but no sample produced: say why, from the samples' errors.
    let mut errors: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for r in records {
        for run in &r.runs {
            for (k, e) in &run.metric_errors {
                *errors
                    .entry(k.clone())
                    .or_default()
                    .entry(e.clone())
                    .or_default() += 1;
            }
        }
    }
    for (k, errs) in &errors {
        if !best.means.contains_key(k) && !absent.contains_key(k) && k != "output" {
            let (msg, n) = errs
                .iter()
                .max_by_key(|(_, n)| **n)
                .map(|(m, n)| (m.clone(), *n))
                .unwrap_or_default();
            absent.insert(
                k.clone(),
                format!("no sample produced it ({n} times: {msg})"),
            );
        }
    }
    let metric_errors: BTreeMap<String, usize> = errors
        .iter()
        .map(|(k, e)| (k.clone(), e.values().sum()))
        .collect();
    json!({
        "dataset": info.dataset,
        "samples": records.len(),
        "failed": failed,
        "metrics": best.means,
        "counts": best.counts,
        "first_sample": {
            "failed": first_failed,
            "metrics": first.means,
            "counts": first.counts,
        },
        "best_of_n": {
            "n": info.samples,
            "by": info.best_by,
            "fell_back_to_first": fallbacks,
        },
        "absent": absent,
        "metric_errors": metric_errors,
        "with_warnings": records.iter().filter(|r| !r.warnings.is_empty()).count(),
        "stage": info.stage.as_str(),
        "oracle_masks": info.oracle_masks,
        "protocol": {"size": info.size, "clip_model": info.clip_model},
        "components": info.components,
    })
}

/// Reads `OUT/run.json`.
pub fn read_run_info(out: &Path) -> EvalResult<RunInfo> {
    let path = out.join(RUN_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::Report {
        path: path.clone(),
        message: format!("{e}; is this the --out folder of a `cielr eval` run?"),
    })?;
    serde_json::from_str(&text).map_err(|e| EvalError::Report {
        path,
        message: format!("not a run file: {e}"),
    })
}

fn write(path: &Path, text: &str) -> EvalResult<()> {
    std::fs::write(path, text).map_err(|e| EvalError::io(path, e))
}

/// Writes `summary.json`, `samples.csv`, `summary.md` and `index.html` from
/// `OUT/samples.jsonl`; returns the summary.
pub fn write_reports(out: &Path, info: &RunInfo) -> EvalResult<Value> {
    let mut records = read_samples(&out.join(SAMPLES_FILE))?;
    records.sort_by_key(|r| r.index);
    let summary = summarize(info, &records);
    let text = serde_json::to_string_pretty(&summary)
        .map_err(|e| EvalError::Config(format!("serialising the summary: {e}")))?;
    write(&out.join("summary.json"), &text)?;
    write(&out.join("samples.csv"), &csv(&records))?;
    write(&out.join("summary.md"), &markdown(info, &summary))?;
    write(&out.join("index.html"), &html(info, &summary, &records))?;
    Ok(summary)
}

/// Merges the runs in `inputs` (each an OUT folder) into `out`: their samples (by id; the
/// first occurrence wins, later duplicates are counted), images and outputs, then writes
/// the reports. `out` may be one of the inputs. Returns the summary and how many
/// duplicates were dropped.
pub fn merge(inputs: &[PathBuf], out: &Path) -> EvalResult<(Value, usize)> {
    let Some(first) = inputs.first() else {
        return Err(EvalError::Config(
            "give at least one run folder to report on".into(),
        ));
    };
    let info = read_run_info(first)?;
    let mut records: Vec<SampleRecord> = Vec::new();
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    for dir in inputs {
        let other = read_run_info(dir)?;
        if other.dataset != info.dataset || other.stage != info.stage {
            return Err(EvalError::Config(format!(
                "{} is a {} run of {}, but {} is a {} run of {}: only runs of the same dataset and stage merge",
                dir.display(),
                other.stage.as_str(),
                other.dataset,
                first.display(),
                info.stage.as_str(),
                info.dataset
            )));
        }
        let same_dir = same_path(dir, out);
        for r in read_samples(&dir.join(SAMPLES_FILE))? {
            if !seen.insert(r.id.clone()) {
                duplicates += 1;
                continue;
            }
            if !same_dir {
                let files = r
                    .images
                    .values()
                    .cloned()
                    .chain(r.runs.iter().filter_map(|x| x.output.clone()));
                for rel in files {
                    copy_inside(dir, out, &rel)?;
                }
            }
            records.push(r);
        }
    }
    records.sort_by_key(|r| r.index);
    let mut text = String::new();
    for r in &records {
        let line = serde_json::to_string(r)
            .map_err(|e| EvalError::Config(format!("serialising a record: {e}")))?;
        text.push_str(&line);
        text.push('\n');
    }
    write(&out.join(SAMPLES_FILE), &text)?;
    let mut merged = info.clone();
    for dir in &inputs[1..] {
        for (k, v) in read_run_info(dir)?.absent {
            merged.absent.entry(k).or_insert(v);
        }
    }
    let run_text = serde_json::to_string_pretty(&merged)
        .map_err(|e| EvalError::Config(format!("serialising run.json: {e}")))?;
    write(&out.join(RUN_FILE), &run_text)?;
    Ok((write_reports(out, &merged)?, duplicates))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn copy_inside(from: &Path, to: &Path, rel: &str) -> EvalResult<()> {
    // Records written by the runner name files under images/ or outputs/ only.
    let ok = (rel.starts_with("images/") || rel.starts_with("outputs/"))
        && !rel.contains("..")
        && !rel.contains('\\');
    if !ok {
        return Err(EvalError::Report {
            path: from.join(SAMPLES_FILE),
            message: format!("a record names the file {rel:?}, outside images/ and outputs/"),
        });
    }
    let src = from.join(rel);
    let dst = to.join(rel);
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
    }
    if src.exists() {
        std::fs::copy(&src, &dst).map_err(|e| EvalError::io(&src, e))?;
    }
    Ok(())
}

fn metric_names(records: &[SampleRecord]) -> Vec<String> {
    let mut names = BTreeSet::new();
    for r in records {
        for run in &r.runs {
            names.extend(run.metrics.keys().cloned());
        }
    }
    names.into_iter().collect()
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `samples.csv`: one row per sample, the first run's and the best run's numbers.
pub fn csv(records: &[SampleRecord]) -> String {
    let names = metric_names(records);
    let mut s = String::from("id,index,status,error,instruction,target,runs,best_run");
    for n in &names {
        let _ = write!(s, ",first_{n}");
    }
    for n in &names {
        let _ = write!(s, ",best_{n}");
    }
    s.push('\n');
    for r in records {
        let cells = [
            csv_field(&r.id),
            r.index.to_string(),
            r.status.clone(),
            csv_field(r.error.as_deref().unwrap_or("")),
            csv_field(r.instruction.as_deref().unwrap_or("")),
            csv_field(r.target.as_deref().unwrap_or("")),
            r.runs.len().to_string(),
            r.best_run.map(|b| b.to_string()).unwrap_or_default(),
        ];
        s.push_str(&cells.join(","));
        for m in [&r.first, &r.best] {
            for n in &names {
                let v = m.as_ref().and_then(|m| m.get(n));
                let _ = write!(s, ",{}", v.map(|v| v.to_string()).unwrap_or_default());
            }
        }
        s.push('\n');
    }
    s
}

fn fmt_num(v: Option<&Value>) -> String {
    match v.and_then(Value::as_f64) {
        Some(x) if x.abs() >= 100.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.4}"),
        None => "–".into(),
    }
}

/// `summary.md`: a markdown table of the summary.
pub fn markdown(info: &RunInfo, summary: &Value) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# {} — stage `{}`{}\n",
        info.dataset,
        info.stage.as_str(),
        if info.oracle_masks {
            ", oracle masks"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "{} samples, {} failed (first sample: {} failed); best of {} by `{}`.\n",
        summary["samples"],
        summary["failed"],
        summary["first_sample"]["failed"],
        info.samples,
        info.best_by
    );
    let _ = writeln!(
        s,
        "| metric | best of N | first sample | samples | better |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---|");
    let empty = Map::new();
    let best = summary["metrics"].as_object().unwrap_or(&empty);
    for (k, v) in best {
        let better = match info.higher_is_better.get(k) {
            Some(false) => "lower",
            Some(true) => "higher",
            None => "–",
        };
        let _ = writeln!(
            s,
            "| {k} | {} | {} | {} | {better} |",
            fmt_num(Some(v)),
            fmt_num(summary["first_sample"]["metrics"].get(k)),
            summary["counts"].get(k).cloned().unwrap_or(Value::Null),
        );
    }
    if let Some(absent) = summary["absent"].as_object().filter(|a| !a.is_empty()) {
        let _ = writeln!(s, "\nNot computed:\n");
        for (k, why) in absent {
            let _ = writeln!(s, "- `{k}`: {}", why.as_str().unwrap_or(""));
        }
    }
    if best.contains_key("psnr") {
        let _ = writeln!(
            s,
            "\nProtocol numbers (`psnr`, `ssim`, `mse`) weight both images by `1 - mask/255`, so the zeroed edit region matches exactly and inflates them; the `_clean` columns look at unmasked pixels only (docs/evaluation.md)."
        );
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG histogram of `values` (10 bins).
pub fn histogram_svg(name: &str, values: &[f64]) -> String {
    let (w, h, pad) = (320.0, 140.0, 24.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"histogram of {n}\"><text x=\"4\" y=\"14\" font-size=\"12\">{n} (n={c})</text>",
        n = esc(name),
        c = values.len()
    );
    if values.is_empty() {
        s.push_str("</svg>");
        return s;
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let bins = 10usize;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let mut counts = vec![0usize; bins];
    for v in values {
        let b = (((v - lo) / span) * bins as f64).floor() as usize;
        counts[b.min(bins - 1)] += 1;
    }
    let max = *counts.iter().max().unwrap_or(&1) as f64;
    let bw = (w - 2.0 * pad) / bins as f64;
    for (i, c) in counts.iter().enumerate() {
        let bh = (h - 2.0 * pad) * (*c as f64) / max;
        let _ = write!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"#4a7ab5\"><title>{c}</title></rect>",
            pad + i as f64 * bw + 1.0,
            h - pad - bh,
            bw - 2.0,
            bh
        );
    }
    let _ = write!(
        s,
        "<text x=\"{pad}\" y=\"{}\" font-size=\"10\">{lo:.3}</text><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"end\">{hi:.3}</text></svg>",
        h - 6.0,
        w - pad,
        h - 6.0
    );
    s
}

fn plan_html(plan: &Value) -> String {
    let mut s = String::new();
    if let Some(steps) = plan["steps"].as_array() {
        s.push_str("<ol>");
        for st in steps {
            let _ = write!(
                s,
                "<li>{} {} prompt “{}”</li>",
                esc(st["op"].as_str().unwrap_or("?")),
                esc(&st["targets"].to_string()),
                esc(st["prompt"].as_str().unwrap_or(""))
            );
        }
        s.push_str("</ol>");
    }
    if let Some(trace) = plan["trace"].as_array() {
        let _ = write!(
            s,
            "<details><summary>trace ({} entries)</summary>",
            trace.len()
        );
        for t in trace {
            let body = match t["kind"].as_str() {
                Some("question") => format!(
                    "<b>{}</b><pre>{}</pre>→ <pre>{}</pre>",
                    esc(t["step"].as_str().unwrap_or("")),
                    esc(t["question"].as_str().unwrap_or("")),
                    esc(t["answer"].as_str().unwrap_or(""))
                ),
                _ => format!("<pre>{}</pre>", esc(&t.to_string())),
            };
            let _ = write!(s, "<div class=\"tr\">{body}</div>");
        }
        s.push_str("</details>");
    }
    s
}

/// `index.html`: the summary, a histogram per metric and one row per sample.
pub fn html(info: &RunInfo, summary: &Value, records: &[SampleRecord]) -> String {
    let mut s = String::from(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>cielr eval</title><style>\
body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}\
img{max-width:200px;display:block}pre{white-space:pre-wrap;max-width:40em;font-size:11px;margin:2px}.fail{background:#fee}\
.tr{border-top:1px dotted #aaa}.hist{display:inline-block;margin:4px}</style></head><body>",
    );
    let _ = write!(
        s,
        "<h1>{} — stage {}{}</h1><p>{} samples, {} failed; best of {} by {}.</p>",
        esc(&info.dataset),
        info.stage.as_str(),
        if info.oracle_masks {
            ", oracle masks"
        } else {
            ""
        },
        summary["samples"],
        summary["failed"],
        info.samples,
        esc(&info.best_by)
    );
    s.push_str(
        "<table><tr><th>metric</th><th>best of N</th><th>first sample</th><th>samples</th></tr>",
    );
    let empty = Map::new();
    for (k, v) in summary["metrics"].as_object().unwrap_or(&empty) {
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(k),
            fmt_num(Some(v)),
            fmt_num(summary["first_sample"]["metrics"].get(k)),
            summary["counts"].get(k).cloned().unwrap_or(Value::Null)
        );
    }
    s.push_str("</table>");
    if let Some(absent) = summary["absent"].as_object().filter(|a| !a.is_empty()) {
        s.push_str("<p>Not computed:</p><ul>");
        for (k, why) in absent {
            let _ = write!(
                s,
                "<li><code>{}</code>: {}</li>",
                esc(k),
                esc(why.as_str().unwrap_or(""))
            );
        }
        s.push_str("</ul>");
    }
    s.push_str("<h2>Histograms (best run per sample)</h2>");
    for name in metric_names(records) {
        let values: Vec<f64> = records
            .iter()
            .filter_map(|r| r.best.as_ref().and_then(|m| m.get(&name)).copied())
            .filter(|v| v.is_finite())
            .collect();
        let _ = write!(
            s,
            "<div class=\"hist\">{}</div>",
            histogram_svg(&name, &values)
        );
    }
    s.push_str("<h2>Samples</h2><table><tr><th>sample</th><th>input</th><th>benchmark mask</th><th>chosen region</th><th>output</th><th>numbers</th><th>plan</th></tr>");
    for r in records {
        let _ = write!(
            s,
            "<tr class=\"{}\"><td><b>{}</b><br>{}<br><i>target: {}</i>{}{}{}</td>",
            if r.ok() { "ok" } else { "fail" },
            esc(&r.id),
            esc(r.instruction.as_deref().unwrap_or("")),
            esc(r.target.as_deref().unwrap_or("")),
            r.error
                .as_ref()
                .map(|e| format!("<br><b>error:</b> {}", esc(e)))
                .unwrap_or_default(),
            r.notes
                .as_ref()
                .map(|n| format!("<br>notes: {}", esc(n)))
                .unwrap_or_default(),
            r.warnings
                .iter()
                .map(|w| format!("<br>warning: {}", esc(w)))
                .collect::<String>()
        );
        for key in ["input", "gt", "region", "output"] {
            match r.images.get(key) {
                Some(p) => {
                    let _ = write!(s, "<td><img src=\"{}\" alt=\"{key}\"></td>", esc(p));
                }
                None => s.push_str("<td></td>"),
            }
        }
        s.push_str("<td>");
        if let Some(best) = &r.best {
            for (k, v) in best {
                let first = r.first.as_ref().and_then(|f| f.get(k));
                let _ = write!(
                    s,
                    "{}: {:.4}{}<br>",
                    esc(k),
                    v,
                    match first {
                        Some(f) if r.runs.len() > 1 => format!(" (first {f:.4})"),
                        _ => String::new(),
                    }
                );
            }
        }
        s.push_str("</td><td>");
        let shown = r.best_run.unwrap_or(0);
        if let Some(run) = r.runs.get(shown) {
            if let Some(p) = &run.plan {
                s.push_str(&plan_html(p));
            }
            if let Some(a) = &run.action {
                let _ = write!(s, "<pre>{}</pre>", esc(&a.to_string()));
            }
            if let Some(o) = &run.oracle {
                let _ = write!(s, "<pre>oracle: {}</pre>", esc(&o.to_string()));
            }
        }
        s.push_str("</td></tr>");
    }
    s.push_str("</table></body></html>\n");
    s
}
