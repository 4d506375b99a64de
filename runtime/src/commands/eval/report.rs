//! The evaluation report: report.json, report.html and its PNG plots (cIoU success curves, latency and size bars, the frames of most disagreement).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

use cavsync_core::atomic::write_atomic;
use cavsync_core::evaluation::{AgreementSummary, NEAR_TIE};
use cavsync_core::localize::save_png;
use cavsync_core::metrics::LocalizationSummary;
use cavsync_core::report::escape;
use cavsync_core::retrieval::RetrievalMetrics;

use super::{EvalReport, ModelReport};

/// The font every plot is labelled with, bundled so that plots look the same on every machine.
static FONT: &[u8] = include_bytes!("../../../../assets/fonts/DejaVuSans.ttf");

const PLOT_SIZE: (u32, u32) = (720, 420);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled file is a valid TrueType font; a failure here would show as missing labels, not wrong numbers.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing a plot: {e}")
}

/// Draw on a white canvas of [`PLOT_SIZE`] and save it as a PNG.
fn plot(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    register_font();
    let (w, h) = PLOT_SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let image = RgbImage::from_raw(w, h, buf).context("plot buffer size")?;
    save_png(&image, path)?;
    Ok(())
}

fn models(report: &EvalReport) -> Vec<&ModelReport> {
    std::iter::once(&report.reference)
        .chain(report.candidates.iter().map(|c| &c.model))
        .collect()
}

fn colour(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    COLOURS[i % COLOURS.len()]
}

/// The series labels in a framed box.
fn draw_legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> anyhow::Result<()>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)
}

/// cIoU success curves of every model (share of sounding frames at or above each threshold).
fn ciou_plot(report: &EvalReport, path: &Path) -> anyhow::Result<()> {
    plot(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "cIoU success: share of sounding frames with cIoU >= t",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..1f64, 0f64..1f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("cIoU threshold t")
            .y_desc("share of frames")
            .draw()
            .map_err(plot_err)?;
        for (i, m) in models(report).into_iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(
                    m.ciou_success.iter().copied(),
                    c.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(m.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        draw_legend(&mut chart)
    })
}

/// One bar per model, split into parts (label, value, colour) stacked from zero.
fn bar_plot(
    path: &Path,
    caption: &str,
    unit: &str,
    names: &[String],
    parts: &[Vec<(&'static str, f64)>],
) -> anyhow::Result<()> {
    let top = parts
        .iter()
        .map(|p| p.iter().map(|(_, v)| v).sum::<f64>())
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.2;
    plot(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            // A segmented range a..b has b - a + 1 segments.
            .build_cartesian_2d((0..names.len() - 1).into_segmented(), 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .y_desc(unit)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .draw()
            .map_err(plot_err)?;
        let kinds: Vec<&str> = parts
            .first()
            .map(|p| p.iter().map(|(k, _)| *k).collect())
            .unwrap_or_default();
        for (k, kind) in kinds.iter().enumerate() {
            let c = colour(k);
            let bars = parts.iter().enumerate().map(|(i, p)| {
                let below: f64 = p[..k].iter().map(|(_, v)| v).sum();
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), below),
                        (SegmentValue::Exact(i + 1), below + p[k].1),
                    ],
                    c.filled(),
                )
            });
            chart
                .draw_series(bars)
                .map_err(plot_err)?
                .label(*kind)
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        }
        draw_legend(&mut chart)
    })
}

fn pct(v: f64) -> String {
    format!("{:.1}%", 100.0 * v)
}

/// R@1 / R@5 / R@10 of one retrieval direction, as percentages.
fn recalls(m: &RetrievalMetrics) -> String {
    format!("{} / {} / {}", pct(m.r1), pct(m.r5), pct(m.r10))
}

fn opt_pct(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), pct)
}

/// Rows of (label, value per model) for the task metrics.
fn task_rows(models: &[&ModelReport]) -> Vec<(String, Vec<String>)> {
    let loc = |f: &dyn Fn(&LocalizationSummary) -> String| -> Vec<String> {
        models
            .iter()
            .map(|m| m.localization.as_ref().map_or_else(|| "-".to_string(), f))
            .collect()
    };
    let base = |f: &dyn Fn(&cavsync_core::metrics::Baselines) -> String| -> Vec<String> {
        models
            .iter()
            .map(|m| m.baselines.as_ref().map_or_else(|| "-".to_string(), f))
            .collect()
    };
    let recall_row = |pick: &dyn Fn(&ModelReport) -> Option<&RetrievalMetrics>| -> Vec<String> {
        models
            .iter()
            .map(|m| pick(m).map_or_else(|| "-".to_string(), recalls))
            .collect()
    };
    vec![
        (
            "sounding frames".into(),
            loc(&|s| s.sounding_frames.to_string()),
        ),
        ("pointing".into(), loc(&|s| pct(s.pointing))),
        (
            "pointing, centre prior".into(),
            base(&|b| pct(b.centre_prior.pointing)),
        ),
        (
            "pointing, mismatched audio".into(),
            base(&|b| pct(b.mismatched_audio.pointing)),
        ),
        ("cIoU@0.5".into(), loc(&|s| pct(s.ciou_at_half))),
        (
            "cIoU@0.5 ceiling (any heatmap)".into(),
            loc(&|s| pct(s.ciou_at_half_ceiling)),
        ),
        (
            "cIoU@0.5, centre prior".into(),
            base(&|b| pct(b.centre_prior.ciou_at_half)),
        ),
        ("mean cIoU".into(), loc(&|s| format!("{:.3}", s.mean_ciou))),
        ("AUC".into(), loc(&|s| format!("{:.3}", s.auc))),
        (
            "AUC, centre prior".into(),
            base(&|b| format!("{:.3}", b.centre_prior.auc)),
        ),
        (
            "2+ classes in view, one sounds: pointing".into(),
            loc(&|s| opt_pct(s.multi_class_pointing)),
        ),
        (
            "sounding frames active".into(),
            loc(&|s| pct(s.sounding_active_rate)),
        ),
        (
            "silent frames not active".into(),
            loc(&|s| pct(s.silent_inactive_rate)),
        ),
        (
            "off-screen frames not active".into(),
            loc(&|s| opt_pct(s.offscreen_inactive_rate)),
        ),
        (
            "A->V R@1 / R@5 / R@10".into(),
            recall_row(&|m| m.retrieval.as_ref().map(|r| &r.audio_to_visual)),
        ),
        (
            "V->A R@1 / R@5 / R@10".into(),
            recall_row(&|m| m.retrieval.as_ref().map(|r| &r.visual_to_audio)),
        ),
        (
            "A->V R@1 / R@5 / R@10, by the map".into(),
            recall_row(&|m| m.patch_retrieval.as_ref().map(|r| &r.audio_to_visual)),
        ),
        (
            "V->A R@1 / R@5 / R@10, by the map".into(),
            recall_row(&|m| m.patch_retrieval.as_ref().map(|r| &r.visual_to_audio)),
        ),
        (
            "audio encoder, median ms".into(),
            models
                .iter()
                .map(|m| format!("{:.2}", 1e3 * m.latency.audio_s))
                .collect(),
        ),
        (
            "visual encoder, median ms".into(),
            models
                .iter()
                .map(|m| format!("{:.2}", 1e3 * m.latency.visual_s))
                .collect(),
        ),
        (
            "frame pair, median ms".into(),
            models
                .iter()
                .map(|m| format!("{:.2}", 1e3 * m.latency.pair_s))
                .collect(),
        ),
        (
            "bundle size, MB".into(),
            models
                .iter()
                .map(|m| format!("{:.2}", m.size_bytes as f64 / 1e6))
                .collect(),
        ),
        (
            "resident memory of the plans, MiB".into(),
            models
                .iter()
                .map(|m| {
                    m.resident_mib
                        .map_or_else(|| "-".into(), |v| format!("{v:.1}"))
                })
                .collect(),
        ),
    ]
}

/// The columns of the agreement table: the reference's jitter baseline (when measured), then each candidate.
fn agreement_columns(report: &EvalReport) -> Vec<(String, &AgreementSummary)> {
    report
        .jitter
        .iter()
        .map(|j| {
            (
                format!("reference shifted {} px (baseline)", j.pixels),
                &j.agreement,
            )
        })
        .chain(
            report
                .candidates
                .iter()
                .map(|c| (c.model.name.clone(), &c.agreement)),
        )
        .collect()
}

/// Rows of (label, value per column of [`agreement_columns`]) for the agreement with the reference.
fn agreement_rows(report: &EvalReport) -> Vec<(String, Vec<String>)> {
    let columns = agreement_columns(report);
    let col = |f: &dyn Fn(&AgreementSummary) -> String| -> Vec<String> {
        columns.iter().map(|(_, a)| f(a)).collect()
    };
    let spread = |s: &Option<cavsync_core::evaluation::Spread>| {
        s.map_or_else(
            || "- (widths differ)".to_string(),
            |s| format!("{:.5} / {:.5} / {:.5}", s.mean, s.p5, s.worst),
        )
    };
    vec![
        ("frames".into(), col(&|a| a.frames.to_string())),
        (
            "audio global cosine: mean / p5 / worst".into(),
            col(&|a| spread(&a.audio_global)),
        ),
        (
            "visual global cosine: mean / p5 / worst".into(),
            col(&|a| spread(&a.visual_global)),
        ),
        (
            "patch token cosine: mean / p5 / worst".into(),
            col(&|a| spread(&a.patches)),
        ),
        (
            "peak in the same patch".into(),
            col(&|a| pct(a.same_peak_rate)),
        ),
        (
            "peak in the same or a neighbouring patch".into(),
            col(&|a| pct(a.near_peak_rate)),
        ),
        (
            "same or neighbouring patch, frames the reference calls active".into(),
            col(&|a| {
                a.near_peak_rate_active.map_or_else(
                    || "-".into(),
                    |r| format!("{} of {}", pct(r), a.reference_active_frames),
                )
            }),
        ),
        (
            format!(
                "same or neighbouring patch or a near-tie (reference >= {NEAR_TIE} of its range there), active frames"
            ),
            col(&|a| opt_pct(a.near_or_tied_rate_active)),
        ),
        (
            "top-50% mask IoU: mean / p5 / worst".into(),
            col(&|a| {
                format!(
                    "{:.3} / {:.3} / {:.3}",
                    a.mask_iou.mean, a.mask_iou.p5, a.mask_iou.worst
                )
            }),
        ),
        (
            "activity agrees".into(),
            col(&|a| pct(a.activity_agreement_rate)),
        ),
    ]
}

fn html_table(head: &[String], rows: &[(String, Vec<String>)]) -> String {
    let mut s = String::from("<table><tr><th></th>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", escape(h));
    }
    s.push_str("</tr>\n");
    for (label, values) in rows {
        let _ = write!(s, "<tr><td>{}</td>", escape(label));
        for v in values {
            let _ = write!(s, "<td>{}</td>", escape(v));
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

fn text_table(head: &[String], rows: &[(String, Vec<String>)]) -> String {
    let label_w = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let col_w: Vec<usize> = (0..head.len())
        .map(|i| {
            rows.iter()
                .map(|(_, v)| v[i].len())
                .chain([head[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut s = format!("{:label_w$}", "");
    for (h, w) in head.iter().zip(&col_w) {
        let _ = write!(s, "  {h:>w$}");
    }
    s.push('\n');
    for (label, values) in rows {
        let _ = write!(s, "{label:label_w$}");
        for (v, w) in values.iter().zip(&col_w) {
            let _ = write!(s, "  {v:>w$}");
        }
        s.push('\n');
    }
    s
}

/// Column heads: every model's name, and the agreement table's columns.
fn column_names(report: &EvalReport) -> (Vec<String>, Vec<String>) {
    let all = models(report).iter().map(|m| m.name.clone()).collect();
    let agreement = agreement_columns(report)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    (all, agreement)
}

/// What the agreement table's baseline column is, when there is one.
fn jitter_note(report: &EvalReport) -> Option<String> {
    report.jitter.map(|j| {
        format!(
            "the first column is the reference itself on every frame shifted right by {} px of its input, its outputs moved back: what a shift nobody would notice already changes",
            j.pixels
        )
    })
}

/// The report as the terminal prints it: task metrics of every model, then each candidate's agreement.
pub fn terminal(report: &EvalReport) -> String {
    let models = models(report);
    let (names, cand) = column_names(report);
    format!(
        "{} clips, {} frames, {} thread(s), {}\n{}\nagreement with the reference ({}{})\n{}",
        report.clips,
        report.frames,
        report.threads,
        report.cpu,
        text_table(&names, &task_rows(&models)),
        report.reference.name,
        jitter_note(report).map_or_else(String::new, |n| format!("; {n}")),
        text_table(&cand, &agreement_rows(report))
    )
}

fn html(report: &EvalReport) -> String {
    let models = models(report);
    let (names, cand) = column_names(report);
    let mut s = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>cavsync evaluation</title>\n<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child{text-align:left}img{max-width:100%}.pair{display:inline-block;margin:6px;font-size:small}</style></head><body>\n",
    );
    let _ = writeln!(
        s,
        "<h1>cavsync evaluation</h1>\n<p>{} clips, {} frames, {} thread(s), {}. Reference: <code>{}</code>.</p>",
        report.clips,
        report.frames,
        report.threads,
        escape(&report.cpu),
        escape(&report.reference.bundle.display().to_string())
    );
    s.push_str("<h2>Models</h2>\n");
    s.push_str(&html_table(&names, &task_rows(&models)));
    s.push_str("<h2>Agreement with the reference</h2>\n");
    if let Some(note) = jitter_note(report) {
        let _ = writeln!(s, "<p>In the table below {}.</p>", escape(&note));
    }
    s.push_str(&html_table(&cand, &agreement_rows(report)));
    s.push_str("<h2>Plots</h2>\n<img src=\"ciou_success.png\" alt=\"cIoU success curves\">\n<img src=\"latency.png\" alt=\"latency\">\n<img src=\"size.png\" alt=\"bundle size\">\n");
    for c in &report.candidates {
        let _ = writeln!(
            s,
            "<h2>Where {} disagrees most (left: reference, right: candidate)</h2>",
            escape(&c.model.name)
        );
        for f in &c.worst_frames {
            let peak = f.peak_distance.map_or_else(
                || "no peak".to_string(),
                |d| format!("peaks {d} patch(es) apart"),
            );
            let _ = writeln!(
                s,
                "<div class=\"pair\"><img src=\"{}\" alt=\"{} frame {}\"><br>{} frame {}: mask IoU {:.3}, {}</div>",
                escape(&f.image),
                escape(&f.clip),
                f.frame,
                escape(&f.clip),
                f.frame,
                f.mask_iou,
                peak
            );
        }
    }
    s.push_str(
        "<script>window.addEventListener('load',()=>{const i=[...document.images];document.body.dataset.images=i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length+' loaded';});</script>\n</body></html>\n",
    );
    s
}

/// Write report.json, the plots and report.html into `dir`.
pub fn write(report: &EvalReport, dir: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    let json_path = dir.join("report.json");
    write_atomic(&json_path, |w| w.write_all(json.as_bytes()))
        .with_context(|| format!("{}: cannot write", json_path.display()))?;
    ciou_plot(report, &dir.join("ciou_success.png"))?;
    let models = models(report);
    let names: Vec<String> = models.iter().map(|m| m.name.clone()).collect();
    let latency: Vec<Vec<(&'static str, f64)>> = models
        .iter()
        .map(|m| {
            vec![
                ("audio encoder", 1e3 * m.latency.audio_s),
                ("visual encoder", 1e3 * m.latency.visual_s),
            ]
        })
        .collect();
    bar_plot(
        &dir.join("latency.png"),
        &format!(
            "median latency per frame pair, {} thread(s)",
            report.threads
        ),
        "ms",
        &names,
        &latency,
    )?;
    let size: Vec<Vec<(&'static str, f64)>> = models
        .iter()
        .map(|m| vec![("bundle files", m.size_bytes as f64 / 1e6)])
        .collect();
    bar_plot(&dir.join("size.png"), "bundle size", "MB", &names, &size)?;
    let page = html(report);
    let html_path = dir.join("report.html");
    write_atomic(&html_path, |w| w.write_all(page.as_bytes()))
        .with_context(|| format!("{}: cannot write", html_path.display()))?;
    Ok(())
}
