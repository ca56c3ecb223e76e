//! The chart: median latency vs K per mode (log x axis), one panel per workload.
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::{
    measure::{Mode, Results, Workload},
    report::baseline,
};

/// A named, coloured line of (x, y) points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn draw(r: &Results, path: &Path) -> Result<()> {
    let font = std::fs::read(FONT).with_context(|| format!("read {FONT} (apt-get install fonts-dejavu-core)"))?;
    let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into_boxed_slice()));
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 2));
    let mut ks: Vec<usize> = r.latency.iter().map(|x| x.k).collect();
    ks.sort_unstable();
    ks.dedup();
    // K = 0 is drawn at x = 1 on the log axis and labelled 0.
    let x_of = |k: usize| (k.max(1)) as f64;
    let x_max = x_of(*ks.last().unwrap_or(&1)) * 2.0;
    for (panel, (w, title)) in panels.iter().zip([
        (Workload::Pass, "a. pass (excluded destination)"),
        (Workload::Redirect, "b. redirected to the 15001 listener"),
    ]) {
        let series: Vec<Series> = [
            ("none", BLACK, ks.iter().filter_map(|&k| baseline(r, k, w).map(|b| (x_of(k), b.median_us))).collect()),
            ("iptables", RED, ks.iter().filter_map(|&k| find(r, k, Mode::Iptables, w).map(|v| (x_of(k), v))).collect()),
            ("eBPF", BLUE, ks.iter().filter_map(|&k| find(r, k, Mode::Ebpf, w).map(|v| (x_of(k), v))).collect()),
        ]
        .into_iter()
        .collect();
        let y_max = series.iter().flat_map(|(_, _, v)| v.iter().map(|p| p.1)).fold(1.0f64, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 22))
            .margin(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((0.8f64..x_max).log_scale(), 0f64..y_max)?;
        chart
            .configure_mesh()
            .x_desc("excluded CIDRs in the pod's policy (K, log scale)")
            .y_desc("median latency per connection (µs)")
            .x_label_formatter(&|x| if *x < 1.5 { "0".to_string() } else { format!("{x:.0}") })
            .draw()?;
        for (name, color, points) in series {
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}

fn find(r: &Results, k: usize, m: Mode, w: Workload) -> Option<f64> {
    r.latency.iter().find(|x| x.k == k && x.mode == m && x.workload == w).map(|x| x.median_us)
}
