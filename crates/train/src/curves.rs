//! Several loss curves on one PNG, to compare runs side by side (the training-together
//! benchmarks: one machine, members in rounds, rounds under attack or churn).

use std::path::Path;

use plotters::prelude::*;

use crate::plot::{ensure_font, FONT_FAMILY};

/// Draw each named series of (x, loss) points as a line in its own colour, with a legend.
pub fn curves_png(path: &Path, title: &str, x_desc: &str, series: &[(String, Vec<(f64, f64)>)]) -> Result<(), String> {
    if !path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("png")) {
        return Err(format!("{} must end in .png", path.display()));
    }
    let finite =
        |s: &Vec<(f64, f64)>| s.iter().copied().filter(|(x, y)| x.is_finite() && y.is_finite()).collect::<Vec<_>>();
    let series: Vec<(String, Vec<(f64, f64)>)> = series.iter().map(|(n, s)| (n.clone(), finite(s))).collect();
    let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, s)| s.iter().copied()).collect();
    if all.is_empty() {
        return Err("no finite points to plot".into());
    }
    let (x0, x1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let (y0, y1) = all.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.1), b.max(p.1)));
    let pad = ((y1 - y0) * 0.05).max(1e-6);
    ensure_font()?;
    let err = |e: &dyn std::fmt::Display| format!("drawing {}: {e}", path.display());
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, (FONT_FAMILY, 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("loss")
        .axis_desc_style((FONT_FAMILY, 16))
        .label_style((FONT_FAMILY, 13))
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT_FAMILY, 14))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_png_and_refuses_nothing_to_draw() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.png");
        let s =
            vec![("a".to_string(), vec![(0.0, 3.0), (1.0, 2.0)]), ("b".to_string(), vec![(0.0, 3.5), (1.0, f64::NAN)])];
        curves_png(&p, "t", "step", &s).unwrap();
        assert_eq!(&std::fs::read(&p).unwrap()[..4], b"\x89PNG");
        assert!(curves_png(&p, "t", "step", &[("a".into(), vec![(0.0, f64::NAN)])]).is_err());
        assert!(curves_png(&dir.path().join("c.svg"), "t", "step", &s).is_err());
    }
}
