//! What a person looks at after `localize`: an animated GIF of each clip's overlays and one HTML page with the per-frame results and metrics.

use std::fmt::Write as _;
use std::path::Path;

use image::RgbImage;
use image::buffer::ConvertBuffer;

use crate::metrics::{Baselines, LocalizationSummary};
use crate::record::FrameRecord;

/// One frame's line in the report: its record and its overlay image.
#[derive(Debug, Clone)]
pub struct ReportRow {
    /// The frame's record.
    pub record: FrameRecord,
    /// Overlay image, relative to the page.
    pub overlay: Option<String>,
}

/// One clip's section of the report.
#[derive(Debug, Clone)]
pub struct ClipReport {
    /// Clip name.
    pub id: String,
    /// Animated GIF, relative to the page.
    pub gif: Option<String>,
    /// Per-frame results.
    pub rows: Vec<ReportRow>,
    /// Metrics over the clip's frames, when annotated.
    pub summary: Option<LocalizationSummary>,
    /// The baselines on the same frames, when computed.
    pub baselines: Option<Baselines>,
}

/// Writes frames as an endlessly looping animated GIF, `delay_ms` per frame, atomically.
pub fn write_gif(frames: &[RgbImage], delay_ms: u32, path: &Path) -> std::io::Result<()> {
    crate::atomic::write_atomic(path, |w| {
        let mut encoder = image::codecs::gif::GifEncoder::new_with_speed(w, 10);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .map_err(std::io::Error::other)?;
        for f in frames {
            let rgba: image::RgbaImage = f.convert();
            let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
            encoder
                .encode_frame(image::Frame::from_parts(rgba, 0, 0, delay))
                .map_err(std::io::Error::other)?;
        }
        Ok(())
    })
}

/// Text made safe for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn summary_line(s: &LocalizationSummary) -> String {
    format!(
        "pointing {:.1}% &middot; cIoU@0.5 {:.1}% (at most {:.1}% for any heatmap) &middot; mean cIoU {:.3} &middot; AUC {:.3} &middot; sounding frames active {:.1}% &middot; {}",
        100.0 * s.pointing,
        100.0 * s.ciou_at_half,
        100.0 * s.ciou_at_half_ceiling,
        s.mean_ciou,
        s.auc,
        100.0 * s.sounding_active_rate,
        s.silent_phrase()
    )
}

/// One frame's row of a clip's table.
fn table_row(row: &ReportRow) -> String {
    let r = &row.record;
    let truth = r.truth.as_ref();
    let yes_no = |v: bool| {
        if v {
            "<span class=\"yes\">yes</span>"
        } else {
            "<span class=\"no\">no</span>"
        }
    };
    format!(
        "<tr><td>{}</td><td>{:.2}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        r.frame,
        r.time_s,
        r.localization.score,
        if r.localization.active { "yes" } else { "no" },
        truth.map_or("-".to_string(), |t| t.sounding.to_string()),
        truth
            .and_then(|t| t.ciou)
            .map_or("-".to_string(), |c| format!("{c:.3}")),
        truth.and_then(|t| t.pointing_hit).map_or("-", yes_no),
        row.overlay.as_ref().map_or(String::new(), |o| format!(
            "<a href=\"{0}\"><img class=\"thumb\" src=\"{0}\"></a>",
            escape(o)
        )),
    )
}

/// The baselines and the model's margin over them, as a paragraph; flagged in red where a baseline does as well.
fn baseline_paragraph(b: &Baselines) -> String {
    let part = |s: &LocalizationSummary| {
        format!(
            "pointing {:.1}% &middot; cIoU@0.5 {:.1}% &middot; AUC {:.3}",
            100.0 * s.pointing,
            100.0 * s.ciou_at_half,
            s.auc
        )
    };
    let m = &b.margin;
    let beaten = b.beaten();
    let flag = if beaten.is_empty() {
        String::new()
    } else {
        format!(
            " <b class=\"no\">A trivial answer does as well on {}: not a result.</b>",
            beaten.join(", ")
        )
    };
    format!(
        "<p>Baselines on the same frames: centre prior {}; mismatched audio {}. Model margin over the best: pointing {:+.1} points, cIoU@0.5 {:+.1} points, AUC {:+.3}.{flag}</p>",
        part(&b.centre_prior),
        part(&b.mismatched_audio),
        100.0 * m.pointing,
        100.0 * m.ciou_at_half,
        m.auc
    )
}

/// Writes a self-contained HTML page (images linked relatively) with every clip's GIF, per-frame table and metrics, atomically.
pub fn write_html(
    title: &str,
    clips: &[ClipReport],
    overall: Option<(&LocalizationSummary, Option<&Baselines>)>,
    path: &Path,
) -> std::io::Result<()> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px}} table{{border-collapse:collapse;font-size:90%}}\
         td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} .clip{{display:flex;gap:2em;margin-bottom:2em}}\
         .no{{color:#b00}} .yes{{color:#070}} img.thumb{{width:112px}}</style></head><body>\n<h1>{t}</h1>\n",
        t = escape(title)
    );
    if let Some((s, baselines)) = overall {
        let _ = writeln!(
            html,
            "<p><b>Overall</b> ({} sounding frames): {}</p>",
            s.sounding_frames,
            summary_line(s)
        );
        if let Some(b) = baselines {
            html.push_str(&baseline_paragraph(b));
            html.push('\n');
        }
    }
    for clip in clips {
        let _ = writeln!(html, "<h2>{}</h2>", escape(&clip.id));
        if let Some(s) = &clip.summary {
            let _ = writeln!(html, "<p>{}</p>", summary_line(s));
        }
        if let Some(b) = &clip.baselines {
            html.push_str(&baseline_paragraph(b));
            html.push('\n');
        }
        html.push_str("<div class=\"clip\">");
        if let Some(gif) = &clip.gif {
            let _ = write!(
                html,
                "<div><img src=\"{}\" alt=\"overlays of {}\"></div>",
                escape(gif),
                escape(&clip.id)
            );
        }
        html.push_str(
            "<table><tr><th>frame</th><th>t (s)</th><th>score</th><th>active</th><th>sounding</th><th>cIoU</th><th>pointing</th><th>overlay</th></tr>\n",
        );
        for row in &clip.rows {
            html.push_str(&table_row(row));
        }
        html.push_str("</table></div>\n");
    }
    html.push_str("</body></html>\n");
    crate::atomic::write_atomic(path, |w| w.write_all(html.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gif_and_page_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let frames = vec![
            RgbImage::from_pixel(8, 8, image::Rgb([255, 0, 0])),
            RgbImage::new(8, 8),
        ];
        let gif = dir.path().join("c.gif");
        write_gif(&frames, 400, &gif).unwrap();
        let decoded = image::open(&gif).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (8, 8));
        let record = FrameRecord {
            clip: "a&b".into(),
            frame: 0,
            time_s: 0.0,
            image: None,
            width: 8,
            height: 8,
            localization: crate::localize::FrameLocalization {
                score: 0.5,
                contrast: 0.25,
                audio: crate::localize::AudioDescriptor {
                    level: -7.0,
                    ..Default::default()
                },
                active: true,
                peaks: vec![],
                boxes: vec![],
            },
            truth: Some(crate::record::FrameTruth {
                sounding: 1,
                ciou: Some(0.75),
                pointing_hit: Some(true),
                offscreen: 0,
            }),
        };
        let rows = vec![ReportRow {
            record,
            overlay: Some("overlays/<c>.png".into()),
        }];
        let page = dir.path().join("index.html");
        let clips = [ClipReport {
            id: "a&b".into(),
            gif: Some("c.gif".into()),
            rows,
            summary: None,
            baselines: None,
        }];
        write_html("demo", &clips, None, &page).unwrap();
        let text = std::fs::read_to_string(&page).unwrap();
        assert!(text.contains("<h2>a&amp;b</h2>"));
        assert!(text.contains("0.750"));
        assert!(text.contains("overlays/&lt;c&gt;.png"));
    }
}
