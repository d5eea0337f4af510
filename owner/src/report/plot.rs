//! The report's two plots: privacy against utility (the paper's figure) and utility against
//! emulator size, one line per method and SRC strength through its alphas.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::write::{Layout, upper_bounds};
use super::{Results, Setting, Stage};

/// One line of a plot: a method and SRC strength through its alphas.
struct Curve {
    name: String,
    /// (x, y, alpha), by alpha.
    points: Vec<(f64, f64, f64)>,
}

/// Each series' points, `x` and `y` read from a setting's label (task means, `None` while a
/// cell is missing).
fn curves(l: &Layout, point: impl Fn(&str) -> Option<(f64, f64)>) -> Vec<Curve> {
    let mut out: Vec<Curve> = Vec::new();
    for s in l.settings {
        let Some((x, y)) = point(&s.label()) else {
            continue;
        };
        let name = s.series();
        match out.iter_mut().find(|c| c.name == name) {
            Some(c) => c.points.push((x, y, s.alpha)),
            None => out.push(Curve {
                name,
                points: vec![(x, y, s.alpha)],
            }),
        }
    }
    for c in &mut out {
        c.points.sort_by(|a, b| a.2.total_cmp(&b.2));
    }
    out
}

/// Privacy versus utility: x = Emulator FT (what the data owner's tuning reveals of the
/// model; lower is more private), y = Plug-in (what the owner gets back), task means, with
/// Full ZS and Full FT as reference levels.
pub(super) fn privacy_utility(path: &Path, r: &Results, l: &Layout) -> Result<()> {
    let tasks = l.tasks;
    let curves = curves(l, |label| {
        let x = r.average(&Setting::emulator(label, Stage::Ft), tasks)?;
        let y = r.average(&Setting::emulator(label, Stage::PlugIn), tasks)?;
        Some((100.0 * x, 100.0 * y))
    });
    draw(
        path,
        "privacy vs utility (mean over the tasks, acc %)",
        "Emulator FT (lower = more private)",
        &curves,
        r,
        l,
    )
}

/// Utility against emulator size: x = the emulator's parameters (millions), y = Plug-in.
pub(super) fn size_utility(path: &Path, r: &Results, l: &Layout) -> Result<()> {
    let tasks = l.tasks;
    let curves = curves(l, |label| {
        let params = r.emulators.get(label)?.params as f64 / 1e6;
        let y = r.average(&Setting::emulator(label, Stage::PlugIn), tasks)?;
        Some((params, 100.0 * y))
    });
    draw(
        path,
        "plug-in accuracy vs emulator size (mean over the tasks, acc %)",
        "emulator parameters (millions)",
        &curves,
        r,
        l,
    )
}

fn draw(
    path: &Path,
    caption: &str,
    x_desc: &str,
    curves: &[Curve],
    r: &Results,
    l: &Layout,
) -> Result<()> {
    let refs: Vec<(&str, f64)> = upper_bounds(l)
        .into_iter()
        .filter_map(|(name, s)| r.average(&s, l.tasks).map(|v| (name, 100.0 * v)))
        .collect();
    let points = curves.iter().flat_map(|c| c.points.iter());
    let span = |values: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
        if lo > hi {
            (0.0, 100.0)
        } else {
            let pad = ((hi - lo) * 0.08).max(1.0);
            (lo - pad, hi + pad)
        }
    };
    let (xlo, xhi) = span(&mut points.clone().map(|p| p.0));
    let (ylo, yhi) = span(&mut points.map(|p| p.1).chain(refs.iter().map(|r| r.1)));
    let root = SVGBackend::new(path, (1000, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    // The legend beside the chart, not over it: the points fill the whole plotting area.
    let (plot_area, legend_area) = root.split_horizontally(770);
    let mut chart = ChartBuilder::on(&plot_area)
        .caption(caption, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(xlo..xhi, ylo..yhi)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("Plug-in (higher = more useful)")
        .draw()?;
    let mut legend: Vec<(String, RGBAColor, bool)> = Vec::new();
    for (i, (name, y)) in refs.iter().enumerate() {
        let color = [BLACK, BLUE, RED][i % 3].to_rgba();
        chart.draw_series(DashedLineSeries::new(
            [(xlo, *y), (xhi, *y)],
            6,
            4,
            color.stroke_width(1),
        ))?;
        legend.push((name.to_string(), color, true));
    }
    for (i, c) in curves.iter().enumerate() {
        let color = Palette99::pick(i + 3).to_rgba();
        chart.draw_series(LineSeries::new(
            c.points.iter().map(|p| (p.0, p.1)),
            color.stroke_width(2),
        ))?;
        chart.draw_series(c.points.iter().map(|&(x, y, alpha)| {
            EmptyElement::at((x, y))
                + Circle::new((0, 0), 4, color.filled())
                + Text::new(format!("a={alpha}"), (6, -12), ("sans-serif", 11))
        }))?;
        legend.push((c.name.clone(), color, false));
    }
    for (i, (name, color, dashed)) in legend.iter().enumerate() {
        let y = 60 + 20 * i as i32;
        if *dashed {
            legend_area.draw(&PathElement::new([(4, y), (22, y)], color.stroke_width(2)))?;
        } else {
            legend_area.draw(&Circle::new((13, y), 4, color.filled()))?;
        }
        legend_area.draw(&Text::new(name.as_str(), (30, y - 7), ("sans-serif", 13)))?;
    }
    root.present()?;
    Ok(())
}
