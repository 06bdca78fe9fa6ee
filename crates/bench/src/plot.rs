//! The plot of the polling baseline: latency percentiles per reader, on a log scale.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

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
    let names: Vec<String> = rows.iter().map(|r| r.name.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(rows.len() * 2 + 1)
        .x_label_formatter(&|x| {
            // Label only the middle of each group.
            let group = (x / slots).floor();
            if (x - (group * slots + slots / 2.0)).abs() < 0.6 {
                names.get(group as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("send → seen, ms (log scale)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
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
