//! SVG plots for a run: throughput and connections over time, and the latency distribution.

use std::path::Path;

use plotters::prelude::*;

use crate::report::RunReport;
use crate::sample::Sample;

/// Writes the run's plots into `dir` and lists them in the report.
pub fn draw(dir: &Path, run: &mut RunReport) -> anyhow::Result<()> {
    let slug = run.slug();
    let samples = &run.observed.samples;
    if samples.len() >= 3 {
        let name = format!("{slug}-throughput.svg");
        series(
            &dir.join(&name),
            &format!("{} {}: done per second", run.scenario, run.variant),
            "per second",
            &throughput(samples),
        )?;
        run.plots.push(name);
        let name = format!("{slug}-resources.svg");
        let conns: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.t_s, s.connections as f64))
            .collect();
        let rss: Vec<(f64, f64)> = samples.iter().map(|s| (s.t_s, s.rss_mib)).collect();
        two_series(
            &dir.join(&name),
            &format!(
                "{} {}: Postgres connections and RSS",
                run.scenario, run.variant
            ),
            ("pg connections", &conns),
            ("RSS MiB (all datamailer processes)", &rss),
        )?;
        run.plots.push(name);
    }
    if run.latencies.len() >= 2 {
        let mut ms = run.latencies.clone();
        ms.sort_by(|a, b| a.total_cmp(b));
        let n = ms.len() as f64;
        let curve: Vec<(f64, f64)> = ms
            .iter()
            .enumerate()
            .map(|(i, v)| ((i as f64 + 1.0) / n * 100.0, *v))
            .collect();
        let name = format!("{slug}-latency.svg");
        series(
            &dir.join(&name),
            &format!(
                "{} {}: {} by percentile",
                run.scenario, run.variant, run.latency_label
            ),
            "ms",
            &curve,
        )?;
        run.plots.push(name);
    }
    Ok(())
}

/// Completions per second, over one-second steps of the samples.
fn throughput(samples: &[Sample]) -> Vec<(f64, f64)> {
    let mut out = vec![];
    let mut last = samples[0];
    for s in samples.iter().skip(1) {
        let dt = s.t_s - last.t_s;
        if dt >= 0.999 {
            out.push((s.t_s, s.done.saturating_sub(last.done) as f64 / dt));
            last = *s;
        }
    }
    out
}

fn bounds(points: &[(f64, f64)]) -> (f64, f64, f64) {
    let x0 = points.first().map(|p| p.0).unwrap_or(0.0);
    let x1 = points.last().map(|p| p.0).unwrap_or(1.0).max(x0 + 1e-9);
    let y1 = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    (x0, x1, y1)
}

fn series(path: &Path, title: &str, y_label: &str, points: &[(f64, f64)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1, y1) = bounds(points);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..y1)?;
    chart.configure_mesh().y_desc(y_label).draw()?;
    chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE))?;
    root.present()?;
    Ok(())
}

fn two_series(
    path: &Path,
    title: &str,
    left: (&str, &[(f64, f64)]),
    right: (&str, &[(f64, f64)]),
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
    root.fill(&WHITE)?;
    let (x0, x1, y1) = bounds(left.1);
    let (_, _, y2) = bounds(right.1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(50)
        .right_y_label_area_size(50)
        .build_cartesian_2d(x0..x1, 0.0..y1)?
        .set_secondary_coord(x0..x1, 0.0..y2);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(left.0)
        .draw()?;
    chart.configure_secondary_axes().y_desc(right.0).draw()?;
    chart
        .draw_series(LineSeries::new(left.1.iter().copied(), &BLUE))?
        .label(left.0)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(right.1.iter().copied(), &RED))?
        .label(right.0)
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
