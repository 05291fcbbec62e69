//! Loss-curve PNG: the training loss against step, with an exponential moving average on top.
//!
//! Text is drawn with Noto Sans embedded in the binary (the `ttf-noto-sans` crate) through plotters'
//! `ab_glyph` renderer, so plotting never looks for system fonts and works on a bare machine without
//! fontconfig or freetype.

use std::fmt::Display;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::register_font;

/// Image size in pixels (width, height).
const SIZE: (u32, u32) = (900, 500);
/// The moving average spans this fraction of the logged points, so a long run's curve is smoothed
/// as much as a short one's and the average does not lag far behind a fast early drop.
const EMA_SPAN_FRACTION: f64 = 1.0 / 40.0;
/// Family name the embedded font is registered under; plotters' own defaults (mesh labels) ask for it.
pub(crate) const FONT_FAMILY: &str = "sans-serif";
/// Runs with at most this many points also get a marker per point.
const MARKER_MAX_POINTS: usize = 50;
/// Smallest max/min loss ratio that gets a log axis; below a decade the log ticks are too sparse to help.
const LOG_MIN_RATIO: f64 = 10.0;

/// Draw the training loss curve and its exponential moving average to a 900x500 PNG at `path`.
pub fn loss_curve_png(path: &Path, title: &str, points: &[(u64, f64)]) -> Result<(), String> {
    // The bitmap backend picks the encoder from the extension; refusing early gives a clearer error.
    let is_png = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(format!("loss curve path {} must end in .png", path.display()));
    }
    let mut raw: Vec<(u64, f64)> = points.iter().copied().filter(|(_, loss)| loss.is_finite()).collect();
    if raw.is_empty() {
        return Err(format!("no finite loss values to plot ({} points given)", points.len()));
    }
    // Callers normally pass steps in order; sorting makes the lines and the EMA right regardless.
    raw.sort_by_key(|&(step, _)| step);
    let alpha = ema_alpha(raw.len());
    let smooth = ema(&raw, alpha);
    ensure_font()?;

    // The EMA is a convex combination of the raw values, so the raw extremes bound both series.
    let (lo, hi) = raw.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &(_, v)| (lo.min(v), hi.max(v)));
    let y = if lo > 0.0 && hi / lo >= LOG_MIN_RATIO { LossAxis::log(lo, hi)? } else { LossAxis::linear(lo, hi)? };
    let to_coord = |pts: &[(u64, f64)]| pts.iter().map(|&(step, v)| (step, y.to_coord(v))).collect::<Vec<_>>();
    let (raw, smooth) = (to_coord(&raw), to_coord(&smooth));
    draw(path, title, step_range(&raw), y, &raw, (&smooth, alpha))
}

/// The y axis. Plotters' own log axis labels ticks like `0.6000000000000001` and crowds them near
/// powers of ten, so a log axis here is log10(loss) on a linear axis with 1-2-5 ticks chosen below.
struct LossAxis {
    inner: RangedCoordf64,
    log: bool,
    bold: Vec<f64>,
    light: Vec<f64>,
}

impl LossAxis {
    /// A log axis covering the positive losses `lo..=hi` with some margin.
    fn log(lo: f64, hi: f64) -> Result<Self, String> {
        let (lo, hi) = ((lo / 1.2).log10(), (hi * 1.2).log10());
        check_bounds(lo, hi)?;
        let (bold, light) = log_ticks(lo, hi);
        Ok(Self { inner: (lo..hi).into(), log: true, bold, light })
    }

    /// A linear axis covering `lo..=hi` with some margin, for losses at or below zero or within a decade.
    fn linear(lo: f64, hi: f64) -> Result<Self, String> {
        // The floor keeps a constant series (lo == hi == 0) from collapsing the axis to a point.
        let pad = ((hi - lo) * 0.05).max(hi.abs().max(lo.abs()) * 0.05).max(1e-9);
        let (lo, hi) = (lo - pad, hi + pad);
        check_bounds(lo, hi)?;
        Ok(Self { inner: (lo..hi).into(), log: false, bold: Vec::new(), light: Vec::new() })
    }

    /// Where a loss value sits on this axis.
    fn to_coord(&self, loss: f64) -> f64 {
        if self.log {
            loss.log10()
        } else {
            loss
        }
    }

    /// Name of the axis, which says whether it is log-scaled.
    fn desc(&self) -> &'static str {
        if self.log {
            "loss (log scale)"
        } else {
            "loss"
        }
    }
}

impl Ranged for LossAxis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        match (self.log, hint.weight().allow_light_points()) {
            (false, _) => self.inner.key_points(hint),
            (true, false) => self.bold.clone(),
            (true, true) => self.light.clone(),
        }
    }

    fn range(&self) -> Range<f64> {
        self.inner.range()
    }
}

impl ValueFormatter<f64> for LossAxis {
    fn format(value: &f64) -> String {
        RangedCoordf64::format(value)
    }

    fn format_ext(&self, value: &f64) -> String {
        if self.log {
            fmt_loss(10f64.powf(*value))
        } else {
            Self::format(value)
        }
    }
}

/// Exponential moving average of `points`' values, seeded with the first value.
/// Smoothing factor for `n` points: the usual 2 / (span + 1) for a span of `n * EMA_SPAN_FRACTION` points.
fn ema_alpha(n: usize) -> f64 {
    let span = (n as f64 * EMA_SPAN_FRACTION).max(1.0);
    2.0 / (span + 1.0)
}

fn ema(points: &[(u64, f64)], alpha: f64) -> Vec<(u64, f64)> {
    let mut acc = None;
    points
        .iter()
        .map(|&(step, v)| {
            let next = acc.map_or(v, |prev: f64| prev + alpha * (v - prev));
            acc = Some(next);
            (step, next)
        })
        .collect()
}

/// The x range for sorted, non-empty `points`, widened to one step when they share a single step.
fn step_range(points: &[(u64, f64)]) -> Range<u64> {
    let first = points.first().map_or(0, |p| p.0);
    let last = points.last().map_or(first, |p| p.0);
    let hi = last.max(first.saturating_add(1));
    // Only reachable with every step at u64::MAX: widen downwards instead.
    let lo = if hi > first { first } else { first.saturating_sub(1) };
    lo..hi
}

/// Log10-space tick positions (bold, light) covering `lo..hi`: 1-2-5 per decade, thinning as decades grow.
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    let decades = hi - lo;
    let mantissas: &[u32] = if decades <= 2.5 { &[1, 2, 5] } else { &[1] };
    // Past eight decades even one label per power of ten would overlap.
    let stride = ((decades / 8.0).ceil() as i32).max(1);
    let (mut bold, mut light) = (Vec::new(), Vec::new());
    for exp in (lo.floor() as i32)..=(hi.ceil() as i32) {
        for m in 1..=9u32 {
            let v = f64::from(m).log10() + f64::from(exp);
            if v < lo || v > hi {
                continue;
            }
            if exp.rem_euclid(stride) == 0 && mantissas.contains(&m) {
                bold.push(v);
            } else if decades <= 5.0 {
                light.push(v);
            }
        }
    }
    (bold, light)
}

/// Format a loss tick with three significant digits, switching to exponent form outside 0.001..100000.
fn fmt_loss(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor();
    if !(-3.0..5.0).contains(&mag) {
        return format!("{v:.1e}");
    }
    let decimals = (2.0 - mag).max(0.0) as usize;
    let s = format!("{v:.decimals$}");
    // Powers of ten come back from log space as 0.20000000000000004; trailing zeros are noise.
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Reject y bounds that overflowed to infinity, which plotters cannot map to pixels.
fn check_bounds(lo: f64, hi: f64) -> Result<(), String> {
    if lo.is_finite() && hi.is_finite() {
        Ok(())
    } else {
        Err(format!("loss values too large to plot (axis bounds {lo}..{hi})"))
    }
}

/// Register the embedded font with plotters once per process.
pub(crate) fn ensure_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT_FAMILY, FontStyle::Normal, ttf_noto_sans::REGULAR)
                .map_err(|_| "embedded Noto Sans font could not be parsed".to_string())
        })
        .clone()
}

/// Render both series (already in axis coordinates) onto a fresh bitmap and save it to `path`.
fn draw(
    path: &Path,
    title: &str,
    x: Range<u64>,
    y: LossAxis,
    raw: &[(u64, f64)],
    (smooth, alpha): (&[(u64, f64)], f64),
) -> Result<(), String> {
    let err = |e: &dyn Display| format!("drawing loss curve {}: {e}", path.display());
    let y_desc = y.desc();
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x, y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_desc)
        .axis_desc_style((FONT_FAMILY, 16))
        .label_style((FONT_FAMILY, 13))
        .draw()
        .map_err(|e| err(&e))?;

    let raw_color = BLUE.mix(0.45);
    chart
        .draw_series(LineSeries::new(raw.iter().copied(), raw_color.stroke_width(1)))
        .map_err(|e| err(&e))?
        .label("loss")
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], raw_color.stroke_width(2)));
    if raw.len() <= MARKER_MAX_POINTS {
        // A line through one point draws nothing, and a handful of points read better marked.
        chart.draw_series(raw.iter().map(|&p| Circle::new(p, 3, raw_color.filled()))).map_err(|e| err(&e))?;
    }
    let smooth_color = RED;
    chart
        .draw_series(LineSeries::new(smooth.iter().copied(), smooth_color.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label(format!("EMA (alpha {alpha:.2})"))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], smooth_color.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font((FONT_FAMILY, 14))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG_SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";

    /// A decaying loss with deterministic wiggle, plus the kinds of bad values a diverging run logs.
    fn synthetic_curve() -> Vec<(u64, f64)> {
        let mut points: Vec<(u64, f64)> = (0..2000u64)
            .map(|step| {
                let s = step as f64;
                (step, 0.05 + 3.0 * (-s / 300.0).exp() + 0.05 * (s * 0.37).sin().abs())
            })
            .collect();
        points.push((2000, f64::NAN));
        points.push((2001, f64::INFINITY));
        points
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).expect("read png");
        assert!(bytes.starts_with(PNG_SIGNATURE), "not a PNG");
        assert!(bytes.len() > 5_000, "PNG suspiciously small: {} bytes", bytes.len());
    }

    #[test]
    fn writes_png_of_decaying_curve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("loss.png");
        loss_curve_png(&path, "synthetic run", &synthetic_curve()).expect("plot");
        assert_png(&path);
    }

    #[test]
    fn non_positive_and_single_point_use_linear_axis() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("linear.png");
        let points: Vec<(u64, f64)> = (0..100u64).map(|s| (s, 1.0 - s as f64 / 50.0)).collect();
        loss_curve_png(&path, "crosses zero", &points).expect("plot");
        assert_png(&path);
        let single = dir.path().join("single.png");
        loss_curve_png(&single, "one point", &[(7, 0.0)]).expect("plot");
        assert!(std::fs::read(&single).expect("read png").starts_with(PNG_SIGNATURE));
    }

    #[test]
    fn no_finite_points_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nan.png");
        let err = loss_curve_png(&path, "nan", &[(0, f64::NAN), (1, f64::NAN)]).expect_err("all NaN");
        assert!(err.contains("no finite loss"), "{err}");
        assert!(loss_curve_png(&path, "empty", &[]).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn loss_ticks_are_short() {
        assert_eq!(fmt_loss(10f64.powf(2f64.log10() - 1.0)), "0.2");
        assert_eq!(fmt_loss(3.0), "3");
        assert_eq!(fmt_loss(0.0123), "0.0123");
        assert_eq!(fmt_loss(2.5e-6), "2.5e-6");
        let (bold, _) = log_ticks(0.1f64.log10(), 3f64.log10());
        let labels: Vec<String> = bold.iter().map(|v| fmt_loss(10f64.powf(*v))).collect();
        assert_eq!(labels, ["0.1", "0.2", "0.5", "1", "2"]);
    }

    #[test]
    fn ema_follows_alpha() {
        let smooth = ema(&[(0, 1.0), (1, 0.0), (2, 0.0)], 0.5);
        assert_eq!(smooth, vec![(0, 1.0), (1, 0.5), (2, 0.25)]);
        // Few points: no smoothing; 200 logged points: a span of 5.
        assert_eq!(ema_alpha(10), 1.0);
        assert!((ema_alpha(200) - 1.0 / 3.0).abs() < 1e-12);
    }
}
