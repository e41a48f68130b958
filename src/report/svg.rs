//! Charts as inline SVG, drawn here: no plotting crate, no JavaScript, no network. Every
//! coordinate is printed with two decimals, so the same data give the same bytes.

use std::fmt::Write as _;

const WIDTH: f64 = 560.0;
const HEIGHT: f64 = 320.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
/// Room above the plot for the legend.
const TOP: f64 = 30.0;
const BOTTOM: f64 = 48.0;

/// Colours for series, in order (colour-blind safe, Okabe–Ito).
pub const PALETTE: &[&str] = &["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"];

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A number for an axis tick or a cell: short, fixed.
pub fn short(v: f64) -> String {
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e4 {
        format!("{v:.0}")
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// `<figure>` around a chart, with the id and caption the report's test looks for.
pub fn figure(id: &str, caption: &str, svg: &str) -> String {
    format!("<figure class=\"chart\" id=\"{}\">\n<figcaption>{}</figcaption>\n{svg}</figure>\n", escape(id), escape(caption))
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub markers: bool,
}

/// Extra marks on a line chart.
pub enum Mark {
    /// A dashed vertical line at x, labelled.
    VLine(f64, String),
    /// The dashed diagonal y = x (ROC, calibration).
    Diagonal,
}

fn scale(v: f64, (lo, hi): (f64, f64), (out_lo, out_hi): (f64, f64)) -> f64 {
    if hi <= lo { (out_lo + out_hi) / 2.0 } else { out_lo + (v - lo) / (hi - lo) * (out_hi - out_lo) }
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi { (0.0, 1.0) } else if lo == hi { (lo - 0.5, hi + 0.5) } else { (lo, hi) }
}

fn axes(out: &mut String, x: (f64, f64), y: (f64, f64), x_label: &str, y_label: &str, x_ticks: &[f64]) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
    let _ = writeln!(out, "<line x1=\"{x0:.2}\" y1=\"{y0:.2}\" x2=\"{x1:.2}\" y2=\"{y0:.2}\" stroke=\"#333\"/><line x1=\"{x0:.2}\" y1=\"{y0:.2}\" x2=\"{x0:.2}\" y2=\"{y1:.2}\" stroke=\"#333\"/>");
    for i in 0..=4 {
        let v = y.0 + (y.1 - y.0) * f64::from(i) / 4.0;
        let py = scale(v, y, (y0, y1));
        let _ = writeln!(out, "<line x1=\"{x0:.2}\" y1=\"{py:.2}\" x2=\"{x1:.2}\" y2=\"{py:.2}\" stroke=\"#eee\"/><text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\" font-size=\"11\">{}</text>", x0 - 4.0, py + 4.0, short(v));
    }
    for &v in x_ticks {
        let px = scale(v, x, (x0, x1));
        let _ = writeln!(out, "<text x=\"{px:.2}\" y=\"{:.2}\" text-anchor=\"middle\" font-size=\"11\">{}</text>", y0 + 16.0, short(v));
    }
    let _ = writeln!(out, "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" font-size=\"12\">{}</text>", (x0 + x1) / 2.0, HEIGHT - 8.0, escape(x_label));
    let _ = writeln!(out, "<text transform=\"translate(14 {:.2}) rotate(-90)\" text-anchor=\"middle\" font-size=\"12\">{}</text>", (y0 + y1) / 2.0, escape(y_label));
}

fn open_svg(label: &str) -> String {
    format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\">\n", escape(label))
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let (x, y) = (LEFT + 200.0 * (i % 3) as f64, 4.0 + 13.0 * (i / 3) as f64);
        let _ = writeln!(out, "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"10\" height=\"10\" fill=\"{}\"/><text x=\"{:.2}\" y=\"{:.2}\" font-size=\"11\">{}</text>", PALETTE[i % PALETTE.len()], x + 14.0, y + 9.0, escape(name));
    }
}

/// Lines (and optional markers) over shared axes. `x_range`/`y_range` fix an axis (e.g. 0–1).
pub fn line_chart(label: &str, x_label: &str, y_label: &str, series: &[Series], marks: &[Mark], x_range: Option<(f64, f64)>, y_range: Option<(f64, f64)>) -> String {
    let x = x_range.unwrap_or_else(|| range(series.iter().flat_map(|s| s.points.iter().map(|p| p.0))));
    let y = y_range.unwrap_or_else(|| {
        let (lo, hi) = range(series.iter().flat_map(|s| s.points.iter().map(|p| p.1)));
        (lo.min(0.0), hi)
    });
    let mut out = open_svg(label);
    let distinct_x: Vec<f64> = {
        let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
        xs.sort_by(f64::total_cmp);
        xs.dedup();
        xs
    };
    let ticks: Vec<f64> = if distinct_x.len() <= 16 && distinct_x.iter().all(|v| v.fract() == 0.0) { distinct_x } else { (0..=4).map(|i| x.0 + (x.1 - x.0) * f64::from(i) / 4.0).collect() };
    axes(&mut out, x, y, x_label, y_label, &ticks);
    let to_px = |(vx, vy): (f64, f64)| (scale(vx, x, (LEFT, WIDTH - RIGHT)), scale(vy, y, (HEIGHT - BOTTOM, TOP)));
    for mark in marks {
        match mark {
            Mark::Diagonal => {
                let (a, b) = (to_px((x.0.max(y.0), x.0.max(y.0))), to_px((x.1.min(y.1), x.1.min(y.1))));
                let _ = writeln!(out, "<line x1=\"{:.2}\" y1=\"{:.2}\" x2=\"{:.2}\" y2=\"{:.2}\" stroke=\"#999\" stroke-dasharray=\"4 4\"/>", a.0, a.1, b.0, b.1);
            }
            Mark::VLine(at, text) => {
                let (px, _) = to_px((*at, y.0));
                let _ = writeln!(out, "<line x1=\"{px:.2}\" y1=\"{:.2}\" x2=\"{px:.2}\" y2=\"{:.2}\" stroke=\"#D55E00\" stroke-dasharray=\"5 3\"/><text x=\"{:.2}\" y=\"{:.2}\" font-size=\"11\" fill=\"#D55E00\">{}</text>", HEIGHT - BOTTOM, TOP, px + 4.0, TOP + 40.0, escape(text));
            }
        }
    }
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let points: Vec<String> = s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()).map(|&p| to_px(p)).map(|(px, py)| format!("{px:.2},{py:.2}")).collect();
        let _ = writeln!(out, "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>", points.join(" "));
        if s.markers {
            for p in s.points.iter().filter(|p| p.0.is_finite() && p.1.is_finite()) {
                let (px, py) = to_px(*p);
                let _ = writeln!(out, "<circle cx=\"{px:.2}\" cy=\"{py:.2}\" r=\"3\" fill=\"{colour}\"/>");
            }
        }
    }
    if series.len() > 1 {
        legend(&mut out, &series.iter().map(|s| s.name.as_str()).collect::<Vec<_>>());
    }
    out.push_str("</svg>\n");
    out
}

/// Horizontal bars, one per label, values from 0 (negative bars go left of the axis).
pub fn bar_chart(label: &str, value_label: &str, bars: &[(String, f64)]) -> String {
    let left = 180.0;
    let row = 22.0;
    let height = TOP + BOTTOM + row * bars.len().max(1) as f64;
    let (lo, hi) = range(bars.iter().map(|b| b.1).chain([0.0]));
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\">\n", escape(label));
    let to_px = |v: f64| scale(v, (lo, hi), (left, WIDTH - RIGHT - 48.0));
    let zero = to_px(0.0);
    for (i, (name, value)) in bars.iter().enumerate() {
        let y = TOP + row * i as f64;
        let (a, b) = (zero.min(to_px(*value)), zero.max(to_px(*value)));
        let _ = writeln!(
            out,
            "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\" font-size=\"11\">{}</text><rect x=\"{a:.2}\" y=\"{:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{}\"/><text x=\"{:.2}\" y=\"{:.2}\" font-size=\"11\">{}</text>",
            left - 6.0,
            y + 15.0,
            escape(name),
            y + 4.0,
            (b - a).max(0.5),
            row - 6.0,
            if *value < 0.0 { PALETTE[1] } else { PALETTE[0] },
            b + 4.0,
            y + 15.0,
            short(*value)
        );
    }
    let axis_y = TOP + row * bars.len() as f64 + 4.0;
    let _ = writeln!(out, "<line x1=\"{zero:.2}\" y1=\"{TOP:.2}\" x2=\"{zero:.2}\" y2=\"{axis_y:.2}\" stroke=\"#333\"/><text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" font-size=\"12\">{}</text>", (left + WIDTH - RIGHT) / 2.0, axis_y + 24.0, escape(value_label));
    out.push_str("</svg>\n");
    out
}

/// A grid of numbers, each cell shaded by its value: `diverging` for z-scores (blue below 0,
/// red above), otherwise one hue from white (0) to dark (the maximum).
pub fn grid(label: &str, row_title: &str, col_title: &str, rows: &[String], cols: &[String], cells: &[Vec<Option<f64>>], diverging: bool) -> String {
    let (left, top, cell_w, cell_h) = (150.0, 110.0, (((WIDTH - 150.0 - RIGHT) / cols.len().max(1) as f64).min(90.0)).max(28.0), 28.0);
    let width = left + cell_w * cols.len() as f64 + RIGHT;
    let height = top + cell_h * rows.len() as f64 + 28.0;
    let max = cells.iter().flatten().flatten().fold(0.0_f64, |m, v| m.max(v.abs()));
    let mut out = format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" role=\"img\" aria-label=\"{}\" font-family=\"sans-serif\">\n", escape(label));
    for (j, col) in cols.iter().enumerate() {
        let x = left + cell_w * (j as f64 + 0.5);
        let _ = writeln!(out, "<text transform=\"translate({x:.2} {:.2}) rotate(-45)\" font-size=\"11\">{}</text>", top - 6.0, escape(col));
    }
    for (i, row) in rows.iter().enumerate() {
        let y = top + cell_h * i as f64;
        let _ = writeln!(out, "<text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"end\" font-size=\"11\">{}</text>", left - 6.0, y + 18.0, escape(row));
        for (j, value) in cells.get(i).map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            let x = left + cell_w * j as f64;
            let fill = match value {
                None => "#f4f4f4".to_string(),
                Some(v) => {
                    let t = if max > 0.0 { (v.abs() / max).min(1.0) } else { 0.0 };
                    let fade = |full: u8| (255.0 - (255.0 - f64::from(full)) * t).round() as u8;
                    let (r, g, b) = if diverging && *v < 0.0 { (fade(33), fade(102), fade(172)) } else if diverging { (fade(178), fade(24), fade(43)) } else { (fade(0), fade(114), fade(178)) };
                    format!("#{r:02x}{g:02x}{b:02x}")
                }
            };
            let text_colour = match value {
                Some(v) if max > 0.0 && v.abs() / max > 0.6 => "#fff",
                _ => "#222",
            };
            let _ = writeln!(
                out,
                "<rect x=\"{x:.2}\" y=\"{y:.2}\" width=\"{cell_w:.2}\" height=\"{cell_h:.2}\" fill=\"{fill}\" stroke=\"#fff\"/><text x=\"{:.2}\" y=\"{:.2}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{text_colour}\">{}</text>",
                x + cell_w / 2.0,
                y + 18.0,
                value.map(short).unwrap_or_default()
            );
        }
    }
    let _ = writeln!(out, "<text x=\"{:.2}\" y=\"{:.2}\" font-size=\"12\">{} (rows) × {} (columns)</text>", 4.0, height - 8.0, escape(row_title), escape(col_title));
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_in_a_chart_is_escaped() {
        let svg = bar_chart("a<b", "x & y", &[("\"quoted\"".to_string(), 1.0)]);
        assert!(svg.contains("a&lt;b") && svg.contains("x &amp; y") && svg.contains("&quot;quoted&quot;"));
        assert!(!svg.contains("a<b"));
    }

    #[test]
    fn the_same_data_draw_the_same_bytes() {
        let series = vec![Series { name: "a".into(), points: vec![(1.0, 2.0), (2.0, 1.5)], markers: true }];
        assert_eq!(line_chart("l", "x", "y", &series, &[Mark::VLine(2.0, "k".into())], None, None), line_chart("l", "x", "y", &series, &[Mark::VLine(2.0, "k".into())], None, None));
    }
}
