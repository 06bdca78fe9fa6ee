//! The plot of the polling baseline: latency percentiles per reader, on a log scale.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::stats::Row;

/// Reads one percentile.
type Pick = fn(&crate::stats::Percentiles) -> f64;

/// Draws grouped bars (p50, p95, p99, max) for each row that has latencies, into an SVG file.
pub fn latency_bars(rows: &[Row], title: &str, path: &Path) -> Result<()> {
    let rows: Vec<&Row> = rows.iter().filter(|row| row.latency.is_some()).collect();
    let slots = 5.0; // four bars and a gap per reader
    let highest = rows.iter().filter_map(|r| r.latency.map(|l| l.max)).fold(1.0, f64::max);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(0.0..rows.len() as f64 * slots, (0.1..highest * 3.0).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc("send → seen, ms (log scale)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    // Each reader's name under its group of bars.
    let label_style = ("sans-serif", 15).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
    for (group, row) in rows.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(group as f64 * slots + slots / 2.0, 0.1));
        root.draw(&Text::new(row.name.clone(), (x, y + 8), label_style.clone())).map_err(|e| anyhow!("{e}"))?;
    }
    let series: [(&str, RGBColor, Pick); 4] = [
        ("p50", RGBColor(66, 133, 244), |l| l.p50),
        ("p95", RGBColor(251, 188, 5), |l| l.p95),
        ("p99", RGBColor(234, 67, 53), |l| l.p99),
        ("max", RGBColor(90, 90, 90), |l| l.max),
    ];
    for (index, (label, color, pick)) in series.into_iter().enumerate() {
        let bars = rows.iter().enumerate().filter_map(move |(group, row)| {
            let value = pick(&row.latency?).max(0.1);
            let left = group as f64 * slots + 0.5 + index as f64;
            Some(Rectangle::new([(left, 0.1), (left + 0.9, value)], color.filled()))
        });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE)
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Percentiles;

    #[test]
    fn draws_a_bar_per_percentile_and_reader() {
        let row = |name: &str, scale: f64| Row {
            name: name.into(),
            events: 10,
            offered_rate: Some(1.0),
            throughput: 0.0,
            drain_rate: None,
            latency: Some(Percentiles { count: 10, p50: scale, p95: 2.0 * scale, p99: 3.0 * scale, max: 4.0 * scale }),
            usage: None,
            cpu_percent: None,
            note: String::new(),
        };
        let path = std::env::temp_dir().join(format!("herald-bench-plot-{}.svg", std::process::id()));
        latency_bars(&[row("herald", 2.0), row("poll every 1s", 500.0)], "test", &path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        // Eight bars plus the four legend swatches, and every reader named on the axis.
        assert!(svg.matches("<rect").count() >= 12, "{svg}");
        assert!(svg.contains("herald") && svg.contains("poll every 1s"));
    }
}
