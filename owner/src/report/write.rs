//! The report's outputs from its cells: `report.md` (accuracies, every difference it states with
//! its paired bootstrap interval, the targets, the owner's costs, the commands), `report.json`
//! and the plots.

use std::path::Path;

use anyhow::Result;
use serde::Serialize;
use serde_json::json;

use super::bootstrap::Difference;
use super::{EmulatorSetting, OwnerCost, Results, Setting, Stage};
use crate::model_files::write_file;

/// What the report covers: its tasks, emulator settings and upper bounds.
pub(super) struct Layout<'a> {
    pub tasks: &'a [String],
    pub settings: &'a [EmulatorSetting],
    /// `adapters` and/or `all` (see `--full-ft`).
    pub full_ft: &'a [&'a str],
    pub model: &'a str,
    /// How every FT cell tunes (what, steps, batch, learning rate).
    pub tuning: &'a str,
}

impl Layout<'_> {
    /// Emulator settings for the tables: by alpha, then in the order methods were given.
    fn by_alpha(&self) -> Vec<&EmulatorSetting> {
        let mut s: Vec<&EmulatorSetting> = self.settings.iter().collect();
        s.sort_by(|a, b| a.alpha.total_cmp(&b.alpha));
        s
    }

    fn alphas(&self) -> Vec<f64> {
        let mut alphas: Vec<f64> = self.settings.iter().map(|s| s.alpha).collect();
        alphas.sort_by(f64::total_cmp);
        alphas.dedup();
        alphas
    }

    /// The setting `method` at `alpha` and `beta`, if the sweep has it.
    fn find(&self, method: &str, alpha: f64, beta: f64) -> Option<&EmulatorSetting> {
        self.settings
            .iter()
            .find(|s| s.method == method && s.alpha == alpha && s.beta == beta)
    }
}

/// A difference the report states: `a − b`, per task and on the mean.
#[derive(Serialize)]
struct Stated {
    name: String,
    /// Per task (in the report's order), then the mean over the tasks.
    per_task: Vec<Option<Difference>>,
    mean: Option<Difference>,
}

fn stated(r: &Results, tasks: &[String], name: String, a: &Setting, b: &Setting) -> Stated {
    Stated {
        name,
        per_task: tasks
            .iter()
            .map(|t| r.difference(a, b, std::slice::from_ref(t)))
            .collect(),
        mean: r.difference(a, b, tasks),
    }
}

/// Every difference the report states: upper bounds, method against uniform LayerDrop at the
/// same size, each emulator's plug-in against Full FT and against its Emulator FT, and SRC
/// against the same emulator without it.
fn differences(r: &Results, l: &Layout) -> Vec<Stated> {
    let tasks = l.tasks;
    let mut out = Vec::new();
    let has = |f: &str| l.full_ft.contains(&f);
    if has("adapters") {
        out.push(stated(
            r,
            tasks,
            "Full FT (adapter layers) − Full ZS".into(),
            &Setting::FullFt,
            &Setting::FullZs,
        ));
    }
    if has("all") && has("adapters") {
        out.push(stated(
            r,
            tasks,
            "Full FT (every layer) − Full FT (adapter layers)".into(),
            &Setting::FullFtAll,
            &Setting::FullFt,
        ));
    }
    let plug = |s: &EmulatorSetting| Setting::emulator(&s.label(), Stage::PlugIn);
    for s in l.by_alpha() {
        if s.method == "uniform-drop" && s.beta == 1.0 {
            continue;
        }
        if let Some(u) = l.find("uniform-drop", s.alpha, 1.0) {
            out.push(stated(
                r,
                tasks,
                format!("{}: Plug-in − uniform-drop's", s.label()),
                &plug(s),
                &plug(u),
            ));
        }
    }
    for s in l.by_alpha() {
        let label = s.label();
        if has("adapters") {
            out.push(stated(
                r,
                tasks,
                format!("{label}: Plug-in − Full FT (adapter layers)"),
                &plug(s),
                &Setting::FullFt,
            ));
        }
        out.push(stated(
            r,
            tasks,
            format!("{label}: Plug-in − Emulator FT"),
            &plug(s),
            &Setting::emulator(&label, Stage::Ft),
        ));
    }
    for s in l.by_alpha().into_iter().filter(|s| s.beta < 1.0) {
        let Some(plain) = l.find(&s.method, s.alpha, 1.0) else {
            continue;
        };
        for stage in Stage::ALL {
            out.push(stated(
                r,
                tasks,
                format!("{}: SRC change of {}", s.label(), stage.title()),
                &Setting::emulator(&s.label(), stage),
                &Setting::emulator(&plain.label(), stage),
            ));
        }
    }
    out
}

/// A target of the study, judged on the mean over the tasks.
#[derive(Serialize)]
struct Target {
    name: String,
    wanted: &'static str,
    measured: Option<Difference>,
    met: Option<bool>,
}

fn targets(r: &Results, l: &Layout) -> Vec<Target> {
    let tasks = l.tasks;
    let stage = |s: &EmulatorSetting, st| Setting::emulator(&s.label(), st);
    let mut out = Vec::new();
    let mut push =
        |name: String, wanted, d: Option<Difference>, rule: &dyn Fn(&Difference) -> bool| {
            out.push(Target {
                name,
                wanted,
                met: d.as_ref().map(rule),
                measured: d,
            })
        };
    for alpha in l.alphas() {
        let (Some(s), Some(u)) = (
            l.find("scaleot", alpha, 1.0),
            l.find("uniform-drop", alpha, 1.0),
        ) else {
            continue;
        };
        let d = r.difference(&stage(s, Stage::PlugIn), &stage(u, Stage::PlugIn), tasks);
        let name = format!("ScaleOT plug-in − uniform LayerDrop plug-in, a={alpha}");
        if alpha >= 0.5 {
            push(name, "> 0, interval above 0", d, &|d| d.low > 0.0);
        } else {
            push(name, "> 0", d, &|d| d.value > 0.0);
        }
    }
    if let Some(s) = l.find("scaleot", 0.5, 1.0)
        && l.full_ft.contains(&"adapters")
    {
        let d = r.difference(&stage(s, Stage::PlugIn), &Setting::FullFt, tasks);
        push(
            "ScaleOT plug-in − Full FT (adapter layers), a=0.5".into(),
            "≥ −1.0",
            d,
            &|d| d.value >= -1.0,
        );
    }
    if let Some(s) = l.find("scaleot", 0.75, 1.0) {
        let d = r.difference(&stage(s, Stage::PlugIn), &stage(s, Stage::Ft), tasks);
        push(
            "ScaleOT plug-in − its Emulator FT, a=0.75".into(),
            "≥ 5",
            d,
            &|d| d.value >= 5.0,
        );
    }
    for s in l.by_alpha() {
        let Some(plain) = l.find(&s.method, s.alpha, 1.0).filter(|_| s.beta < 1.0) else {
            continue;
        };
        let src = |st| r.difference(&stage(s, st), &stage(plain, st), tasks);
        let label = s.label();
        push(
            format!("{label}: SRC change of Plug-in"),
            "within ±0.5",
            src(Stage::PlugIn),
            &|d| d.value.abs() <= 0.5,
        );
        for st in [Stage::Zs, Stage::Ft] {
            push(
                format!("{label}: SRC change of {}", st.title()),
                "< 0",
                src(st),
                &|d| d.value < 0.0,
            );
        }
    }
    out
}

fn pct(x: Option<f64>) -> String {
    x.map_or("–".to_string(), |v| format!("{:.1}", 100.0 * v))
}

fn interval(d: &Option<Difference>) -> String {
    d.map_or("–".to_string(), |d| d.to_string())
}

/// `size` column: share of the full model's parameters, parameters and bytes.
fn size(r: &Results, label: &str) -> String {
    r.emulators.get(label).map_or("?".to_string(), |e| {
        format!(
            "{:.0}% ({:.1}M, {:.0} MiB)",
            100.0 * e.params as f64 / e.full_params as f64,
            e.params as f64 / 1e6,
            e.bytes as f64 / 1048576.0
        )
    })
}

pub(super) fn write_outputs(
    out: &Path,
    r: &Results,
    l: &Layout,
    costs: &[OwnerCost],
) -> Result<()> {
    let tasks = l.tasks;
    let docs: Vec<String> = tasks
        .iter()
        .map(|t| {
            let n = r.cell(&Setting::FullZs, t).map_or(0, |c| c.docs);
            format!("{t} {n}")
        })
        .collect();
    let mut md = format!(
        "# ScaleOT report\n\nBase model: {}. Accuracy (acc, %) on each task's validation split \
         (SciQ, which has no train split: the half of it no adapter was tuned on; documents: {}); \
         `mean` over the tasks. A difference is given with its paired bootstrap \
         95 % interval over documents, `+1.2 [-0.4, +2.8]`; \"within noise\" when the interval \
         contains 0. Fine-tuning: {}.\n\n",
        l.model,
        docs.join(", "),
        l.tuning
    );
    // Summary: one row per emulator.
    md += "## Summary (mean over the tasks)\n\n";
    md += "| setting | alpha | emulator size | Emulator ZS | Emulator FT | Plug-in (full model) | Plug-in − Emulator FT |\n";
    md += "|---|---:|---|---:|---:|---:|---|\n";
    for (name, setting) in upper_bounds(l) {
        md += &format!(
            "| {name} | | 100% | | | {} | |\n",
            pct(r.average(&setting, tasks))
        );
    }
    for s in l.by_alpha() {
        let label = s.label();
        let avg = |st| pct(r.average(&Setting::emulator(&label, st), tasks));
        let gap = r.difference(
            &Setting::emulator(&label, Stage::PlugIn),
            &Setting::emulator(&label, Stage::Ft),
            tasks,
        );
        md += &format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            s.series(),
            s.alpha,
            size(r, &label),
            avg(Stage::Zs),
            avg(Stage::Ft),
            avg(Stage::PlugIn),
            interval(&gap)
        );
    }
    // Per task.
    md += &format!(
        "\n## Per task\n\n| setting | {} | mean |\n|---|",
        tasks.join(" | ")
    );
    md += &"---:|".repeat(tasks.len() + 1);
    md += "\n";
    let mut row = |name: &str, key: &Setting| {
        let vals: Vec<String> = tasks.iter().map(|t| pct(r.acc(key, t))).collect();
        md += &format!(
            "| {name} | {} | {} |\n",
            vals.join(" | "),
            pct(r.average(key, tasks))
        );
    };
    for (name, setting) in upper_bounds(l) {
        row(name, &setting);
    }
    for s in l.by_alpha() {
        for stage in Stage::ALL {
            let label = s.label();
            row(
                &format!("{label}: {}", stage.title()),
                &Setting::emulator(&label, stage),
            );
        }
    }
    // Differences.
    let diffs = differences(r, l);
    md += &format!(
        "\n## Differences (points, paired bootstrap 95 % intervals)\n\n| difference | {} | mean | |\n|---|",
        tasks.join(" | ")
    );
    md += &"---|".repeat(tasks.len() + 2);
    md += "\n";
    for d in &diffs {
        let cells: Vec<String> = d.per_task.iter().map(interval).collect();
        let noise = match d.mean {
            Some(m) if m.within_noise() => "within noise",
            _ => "",
        };
        md += &format!(
            "| {} | {} | {} | {noise} |\n",
            d.name,
            cells.join(" | "),
            interval(&d.mean)
        );
    }
    // Targets.
    let targets = targets(r, l);
    md += "\n## Targets (on the mean over the tasks)\n\n| target | measured [95 % interval] | wanted | |\n|---|---|---|---|\n";
    for t in &targets {
        let verdict = match t.measured.zip(t.met) {
            None => "not measured".to_string(),
            Some((d, met)) => format!(
                "{}{}",
                if met { "met" } else { "missed" },
                if d.within_noise() {
                    " (within noise)"
                } else {
                    ""
                }
            ),
        };
        md += &format!(
            "| {} | {} | {} | {verdict} |\n",
            t.name,
            interval(&t.measured),
            t.wanted
        );
    }
    if !costs.is_empty() {
        md += "\n## Owner-side cost (from the runs' own records)\n\n";
        md += "| run | steps | batch | wall time | s/step | peak RSS |\n|---|---:|---|---:|---:|---:|\n";
        for c in costs {
            md += &format!(
                "| {} | {} | {} | {:.0} s | {:.2} | {} |\n",
                c.run,
                c.steps,
                c.batch,
                c.seconds,
                c.seconds / c.steps.max(1) as f64,
                c.peak_rss_mib.map_or("?".into(), |m| format!("{m:.0} MiB"))
            );
        }
    }
    let cpu_hours: f64 = r.cells.values().map(|c| c.seconds).sum::<f64>() / 3600.0;
    md += &format!(
        "\n## Commands\n\nThe cells took {cpu_hours:.1} hours of wall time (fine-tuning and \
         evaluation; emulators and importance scoring on top). Every cell's commands are in \
         `report.json`; emulators:\n\n"
    );
    for (label, e) in &r.emulators {
        md += &format!("- {label}: `{}`\n", e.command);
    }
    write_file(&out.join("report.md"), md.as_bytes())?;
    let settings: Vec<serde_json::Value> = l
        .settings
        .iter()
        .map(|s| json!({"label": s.label(), "method": s.method, "alpha": s.alpha, "beta": s.beta}))
        .collect();
    write_file(
        &out.join("report.json"),
        serde_json::to_string_pretty(&json!({
            "tasks": tasks,
            "settings": settings,
            "results": r,
            "differences": diffs,
            "targets": targets,
            "owner_costs": costs,
        }))?
        .as_bytes(),
    )?;
    super::plot::privacy_utility(&out.join("privacy-utility.svg"), r, l)?;
    super::plot::size_utility(&out.join("size-utility.svg"), r, l)
}

/// The full-model rows: Full ZS and the Full FT upper bounds the report ran.
pub(super) fn upper_bounds(l: &Layout) -> Vec<(&'static str, Setting)> {
    let mut rows = vec![("Full ZS", Setting::FullZs)];
    if l.full_ft.contains(&"adapters") {
        rows.push(("Full FT (adapter layers)", Setting::FullFt));
    }
    if l.full_ft.contains(&"all") {
        rows.push(("Full FT (every layer)", Setting::FullFtAll));
    }
    rows
}
