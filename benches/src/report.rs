//! Summaries, the markdown table and the PNG chart of a run.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::stats::{summarize, Summary};
use crate::vmms::{LaunchRecord, ParallelRecord, PHASES};

/// Per phase: its own duration (since the previous phase seen) and the
/// cumulative time from spawn, ms.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseSummary {
    pub label: String,
    pub duration_ms: Summary,
    pub cumulative_ms: Summary,
}

/// Summary of one (VMM, workload) row.
#[derive(Debug, Clone, Serialize)]
pub struct RowSummary {
    pub vmm: String,
    pub workload: String,
    pub launches_ok: usize,
    pub launches_failed: usize,
    /// Phase key → summary, in [`PHASES`] order when iterated by the key list.
    pub phases: BTreeMap<String, PhaseSummary>,
    /// user + sys CPU time of the VMM process, ms.
    pub cpu_ms: Option<Summary>,
    /// Host CPU time up to the init line (boot comparison), ms.
    pub cpu_to_init_ms: Option<Summary>,
    /// Peak RSS minus resident guest memory, MiB.
    pub rss_overhead_mib: Option<Summary>,
}

/// Phase durations of one launch: key → ms since the previous mark it has.
pub fn durations(rec: &LaunchRecord) -> Vec<(&'static str, f64)> {
    let mut prev = 0.0;
    let mut out = Vec::new();
    for (key, _) in PHASES {
        if let Some(&t) = rec.marks_ms.get(*key) {
            out.push((*key, t - prev));
            prev = t;
        }
    }
    out
}

/// The label of a phase in a row: the first phase a row has starts at exec.
pub fn phase_label(key: &str, first: bool) -> String {
    let label = PHASES
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, l)| *l)
        .unwrap_or(key);
    if first && label.starts_with('→') {
        format!("exec {label}")
    } else {
        label.to_string()
    }
}

/// Summarizes the successful launches of each (VMM, workload).
pub fn summarize_rows(launches: &[LaunchRecord]) -> Vec<RowSummary> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for l in launches {
        let k = (l.vmm.clone(), l.workload.clone());
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .map(|(vmm, workload)| {
            let rows: Vec<&LaunchRecord> = launches
                .iter()
                .filter(|l| l.vmm == vmm && l.workload == workload)
                .collect();
            let ok: Vec<&LaunchRecord> =
                rows.iter().copied().filter(|l| l.error.is_none()).collect();
            let mut phases = BTreeMap::new();
            for (i, (key, _)) in PHASES.iter().enumerate() {
                let d: Vec<f64> = ok
                    .iter()
                    .filter_map(|l| durations(l).into_iter().find(|(k, _)| k == key))
                    .map(|(_, v)| v)
                    .collect();
                let c: Vec<f64> = ok
                    .iter()
                    .filter_map(|l| l.marks_ms.get(*key).copied())
                    .collect();
                let first = !PHASES[..i]
                    .iter()
                    .any(|(k, _)| ok.iter().any(|l| l.marks_ms.contains_key(*k)));
                if let (Some(duration_ms), Some(cumulative_ms)) = (summarize(&d), summarize(&c)) {
                    phases.insert(
                        key.to_string(),
                        PhaseSummary {
                            label: phase_label(key, first),
                            duration_ms,
                            cumulative_ms,
                        },
                    );
                }
            }
            let cpu: Vec<f64> = ok.iter().map(|l| l.cpu_user_ms + l.cpu_sys_ms).collect();
            let cpu_init: Vec<f64> = ok.iter().filter_map(|l| l.cpu_to_init_ms).collect();
            let rss: Vec<f64> = ok
                .iter()
                .filter(|l| l.rss_samples > 0)
                .map(|l| l.rss_overhead_kib as f64 / 1024.0)
                .collect();
            RowSummary {
                vmm,
                workload,
                launches_ok: ok.len(),
                launches_failed: rows.len() - ok.len(),
                phases,
                cpu_ms: summarize(&cpu),
                cpu_to_init_ms: summarize(&cpu_init),
                rss_overhead_mib: summarize(&rss),
            }
        })
        .collect()
}

/// One peer against capsa on the boot comparison, pair by pair.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub peer: String,
    /// What is compared.
    pub what: String,
    /// Median over the pairs of peer / capsa.
    pub median_ratio: f64,
    pub min_ratio: f64,
    pub max_ratio: f64,
    pub pairs: usize,
}

/// Ratios peer / capsa of the boot comparison, per pair (same iteration).
/// The `peer` of the rootfs transport ratios ([`transport_ratios`]).
pub const TRANSPORT_RATIO: &str = "rootfs virtiofs / block";

/// The rootfs transports against each other, launch pair by launch pair
/// (the same iteration): virtiofs / block for the time to container output
/// of the echo, the small-file job's time (from `start` to its output),
/// and the host CPU per launch of each.
pub fn transport_ratios(launches: &[LaunchRecord]) -> Vec<Ratio> {
    let output: Metric = first_output;
    let job: Metric = |l| Some(l.marks_ms.get("first_output")? - l.extra_ms.get("start")?);
    let cpu: Metric = |l| Some(l.cpu_user_ms + l.cpu_sys_ms);
    let cases: [(&str, &str, &str, Metric); 4] = [
        (
            "launch-virtiofs",
            "launch",
            "echo: exec → container output",
            output,
        ),
        (
            "launch-virtiofs",
            "launch",
            "echo: host CPU per launch",
            cpu,
        ),
        (
            "smallfiles-virtiofs",
            "smallfiles-block",
            "small files: start → output",
            job,
        ),
        (
            "smallfiles-virtiofs",
            "smallfiles-block",
            "small files: host CPU per launch",
            cpu,
        ),
    ];
    pair_ratios(launches, TRANSPORT_RATIO, &cases)
}

/// The `peer` of the warm start ratios ([`warm_ratios`]).
pub const WARM_RATIO: &str = "warm / cold";

/// Warm launches (restored from a template) against cold ones, launch
/// pair by launch pair (the same iteration and rootfs transport): the
/// time to container output, the host CPU and the VMM's peak RSS per
/// launch.
pub fn warm_ratios(launches: &[LaunchRecord]) -> Vec<Ratio> {
    let output: Metric = first_output;
    let cpu: Metric = |l| Some(l.cpu_user_ms + l.cpu_sys_ms);
    let rss: Metric = |l| Some(l.max_rss_kib as f64);
    let cases: [(&str, &str, &str, Metric); 6] = [
        (
            "launch-warm",
            "launch",
            "echo, block: exec → container output",
            output,
        ),
        (
            "launch-warm",
            "launch",
            "echo, block: host CPU per launch",
            cpu,
        ),
        ("launch-warm", "launch", "echo, block: VMM peak RSS", rss),
        (
            "launch-virtiofs-warm",
            "launch-virtiofs",
            "echo, virtiofs: exec → container output",
            output,
        ),
        (
            "launch-virtiofs-warm",
            "launch-virtiofs",
            "echo, virtiofs: host CPU per launch",
            cpu,
        ),
        (
            "launch-virtiofs-warm",
            "launch-virtiofs",
            "echo, virtiofs: VMM peak RSS",
            rss,
        ),
    ];
    pair_ratios(launches, WARM_RATIO, &cases)
}

/// The launch rounds of `--parallel`, warm against cold at the same K:
/// the ratio of their launches/s, and per pair of launches (the i-th of
/// each round) the time to container output.
pub fn parallel_warm_ratios(parallel: &[ParallelRecord]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for warm in parallel.iter().filter(|p| p.workload == "launch-warm") {
        let Some(cold) = parallel
            .iter()
            .find(|p| p.workload == "launch" && p.parallel == warm.parallel)
        else {
            continue;
        };
        if cold.launches_per_second > 0.0 && warm.launches_per_second > 0.0 {
            let r = warm.launches_per_second / cold.launches_per_second;
            out.push(Ratio {
                peer: WARM_RATIO.into(),
                what: format!("{} at once: launches/s", warm.parallel),
                median_ratio: r,
                min_ratio: r,
                max_ratio: r,
                pairs: 1,
            });
        }
        let launches: Vec<LaunchRecord> = warm
            .launches
            .iter()
            .chain(&cold.launches)
            .cloned()
            .collect();
        let what = format!("{} at once: exec → container output", warm.parallel);
        let cases: [PairCase; 1] = [("launch-warm", "launch", &what, first_output)];
        out.extend(pair_ratios(&launches, WARM_RATIO, &cases));
    }
    out
}

/// One quantity of a launch, if it has it.
type Metric = fn(&LaunchRecord) -> Option<f64>;

/// Spawn → the container's first output, ms.
fn first_output(l: &LaunchRecord) -> Option<f64> {
    l.marks_ms.get("first_output").copied()
}

/// A ratio to compute: workload, baseline workload, what, metric.
type PairCase<'a> = (&'a str, &'a str, &'a str, Metric);

/// For each case: the median (min, max) over iterations of
/// metric(workload) / metric(baseline).
fn pair_ratios(launches: &[LaunchRecord], peer: &str, cases: &[PairCase]) -> Vec<Ratio> {
    let ok = |w: &str| -> BTreeMap<usize, &LaunchRecord> {
        launches
            .iter()
            .filter(|l| l.vmm == "capsa" && l.workload == w && l.error.is_none())
            .map(|l| (l.iteration, l))
            .collect()
    };
    let mut out = Vec::new();
    for &(this, base, what, metric) in cases {
        let base = ok(base);
        let r: Vec<f64> = ok(this)
            .iter()
            .filter_map(|(i, l)| {
                let b = metric(base.get(i)?)?;
                (b > 0.0).then_some(metric(l)? / b)
            })
            .collect();
        if let Some(s) = summarize(&r) {
            out.push(Ratio {
                peer: peer.into(),
                what: what.into(),
                median_ratio: s.median,
                min_ratio: s.min,
                max_ratio: s.max,
                pairs: s.n,
            });
        }
    }
    out
}

/// Peers against capsa on the boot comparison, pair by pair.
pub fn ratios(launches: &[LaunchRecord], peers: &[String]) -> Vec<Ratio> {
    let capsa: BTreeMap<usize, &LaunchRecord> = launches
        .iter()
        .filter(|l| l.vmm == "capsa" && l.workload == "boot" && l.error.is_none())
        .map(|l| (l.iteration, l))
        .collect();
    type Metric = fn(&LaunchRecord) -> Option<f64>;
    let metrics: [(&str, Metric); 5] = [
        ("exec → guest /init (serial line)", |l| {
            l.marks_ms.get("init").copied()
        }),
        ("guest /init → exit (reset)", |l| {
            Some(l.marks_ms.get("exit")? - l.marks_ms.get("init")?)
        }),
        ("exec → exit", |l| l.marks_ms.get("exit").copied()),
        ("host CPU time to guest /init", |l| l.cpu_to_init_ms),
        ("RSS overhead", |l| {
            (l.rss_samples > 0).then_some(l.rss_overhead_kib as f64)
        }),
    ];
    let mut out = Vec::new();
    for peer in peers {
        for (what, metric) in metrics {
            let r: Vec<f64> = launches
                .iter()
                .filter(|l| &l.vmm == peer && l.workload == "boot" && l.error.is_none())
                .filter_map(|l| {
                    let c = metric(capsa.get(&l.iteration)?)?;
                    let p = metric(l)?;
                    (c > 0.0).then_some(p / c)
                })
                .collect();
            if let Some(s) = summarize(&r) {
                out.push(Ratio {
                    peer: peer.clone(),
                    what: what.into(),
                    median_ratio: s.median,
                    min_ratio: s.min,
                    max_ratio: s.max,
                    pairs: s.n,
                });
            }
        }
    }
    out
}

/// capsa's container launch against the reference kernel's bare boot
/// ([`crate::vmms::REFERENCE`]), per iteration: capsa launch mark / the
/// reference's `→ guest /init`. Empty without reference launches.
pub fn reference_ratios(launches: &[LaunchRecord]) -> Vec<Ratio> {
    let reference: BTreeMap<usize, f64> = launches
        .iter()
        .filter(|l| l.vmm == crate::vmms::REFERENCE && l.error.is_none())
        .filter_map(|l| Some((l.iteration, *l.marks_ms.get("init")?)))
        .collect();
    let marks = [
        (
            "first_output",
            "capsa launch → container output ÷ reference → /init",
        ),
        ("init", "capsa launch → guest /init ÷ reference → /init"),
    ];
    let mut out = Vec::new();
    for (mark, what) in marks {
        let r: Vec<f64> = launches
            .iter()
            .filter(|l| l.vmm == "capsa" && l.workload == "launch" && l.error.is_none())
            .filter_map(|l| {
                let base = reference.get(&l.iteration)?;
                (*base > 0.0).then_some(l.marks_ms.get(mark)? / base)
            })
            .collect();
        if let Some(s) = summarize(&r) {
            out.push(Ratio {
                peer: "capsa / reference-kernel".into(),
                what: what.into(),
                median_ratio: s.median,
                min_ratio: s.min,
                max_ratio: s.max,
                pairs: s.n,
            });
        }
    }
    out
}

/// The SMP speed-up of the `smp` launches: the single-thread loop's time
/// over the two-thread run's (same total work), per launch.
pub fn smp_speedup(launches: &[LaunchRecord]) -> Vec<Ratio> {
    let r: Vec<f64> = launches
        .iter()
        .filter(|l| l.workload == "smp" && l.error.is_none())
        .filter_map(|l| {
            let one = l.extra_ms.get("one_thread")?;
            let two = l.extra_ms.get("two_threads")?;
            (*two > 0.0).then_some(one / two)
        })
        .collect();
    summarize(&r)
        .map(|s| Ratio {
            peer: "capsa, 2 vCPUs".into(),
            what: "SMP speed-up: CPU-bound loop on 1 thread ÷ the same work on 2 threads".into(),
            median_ratio: s.median,
            min_ratio: s.min,
            max_ratio: s.max,
            pairs: s.n,
        })
        .into_iter()
        .collect()
}

fn s(ms: f64) -> String {
    format!("{:.2}", ms / 1e3)
}

fn workload_name(w: &str) -> &str {
    match w {
        "launch" => "container launch",
        "launch-virtiofs" => "container launch, virtiofs rootfs",
        "launch-warm" => "container launch, warm",
        "launch-virtiofs-warm" => "container launch, virtiofs rootfs, warm",
        "smallfiles-block" => "small files, block rootfs",
        "smallfiles-virtiofs" => "small files, virtiofs rootfs",
        "boot" => "boot comparison",
        "smp" => "SMP loop, 2 vCPUs",
        other => other,
    }
}

/// The markdown tables of a run.
pub fn markdown(
    rows: &[RowSummary],
    ratios: &[Ratio],
    parallel: &[ParallelRecord],
    machine: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "Machine: {machine}\n");
    let _ = writeln!(
        md,
        "Phase durations in seconds (median / p90 / min / max); each phase runs from the \
         previous mark of the same launch, the first from the spawn of the VMM process.\n"
    );
    let _ = writeln!(
        md,
        "| VMM | workload | phase | median | p90 | min | max | cumulative median |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|---:|---:|");
    for r in rows {
        for (key, _) in PHASES {
            if let Some(p) = r.phases.get(*key) {
                let d = p.duration_ms;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.vmm,
                    workload_name(&r.workload),
                    p.label,
                    s(d.median),
                    s(d.p90),
                    s(d.min),
                    s(d.max),
                    s(p.cumulative_ms.median)
                );
            }
        }
    }
    let _ = writeln!(
        md,
        "\n| VMM | workload | launches ok / failed | host CPU per launch, s | host CPU to /init, s | VMM RSS overhead, MiB (median / max) |"
    );
    let _ = writeln!(md, "|---|---|---|---:|---:|---:|");
    for r in rows {
        let rss = r
            .rss_overhead_mib
            .map(|x| format!("{:.1} / {:.1}", x.median, x.max))
            .unwrap_or_else(|| "n/a".into());
        let cpu = r
            .cpu_ms
            .map(|x| s(x.median))
            .unwrap_or_else(|| "n/a".into());
        let cpu_init = r
            .cpu_to_init_ms
            .map(|x| s(x.median))
            .unwrap_or_else(|| "n/a".into());
        let _ = writeln!(
            md,
            "| {} | {} | {} / {} | {} | {} | {} |",
            r.vmm,
            workload_name(&r.workload),
            r.launches_ok,
            r.launches_failed,
            cpu,
            cpu_init,
            rss
        );
    }
    let (transport, peers): (Vec<&Ratio>, Vec<&Ratio>) =
        ratios.iter().partition(|r| r.peer == TRANSPORT_RATIO);
    if !transport.is_empty() {
        let _ = writeln!(
            md,
            "\nRootfs transports, virtiofs / block, per pair of launches (median, [min, max]):\n"
        );
        let _ = writeln!(md, "| measure | virtiofs / block | pairs |");
        let _ = writeln!(md, "|---|---:|---:|");
        for r in transport {
            let _ = writeln!(
                md,
                "| {} | {:.2} [{:.2}, {:.2}] | {} |",
                r.what, r.median_ratio, r.min_ratio, r.max_ratio, r.pairs
            );
        }
    }
    if !peers.is_empty() {
        let _ = writeln!(
            md,
            "\nBoot comparison, peer / capsa per pair unless the row says otherwise (median, \
             [min, max] over the pairs):\n"
        );
        let _ = writeln!(md, "| peer | measure | ratio | pairs |");
        let _ = writeln!(md, "|---|---|---:|---:|");
        for r in peers {
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} [{:.2}, {:.2}] | {} |",
                r.peer, r.what, r.median_ratio, r.min_ratio, r.max_ratio, r.pairs
            );
        }
    }
    if !parallel.is_empty() {
        let _ = writeln!(
            md,
            "\nVMs launched at once; wall from the first spawn to the last exit; launches/s \
             counts those that succeeded:\n"
        );
        let _ = writeln!(
            md,
            "| VMM | workload | VMs at once | launches ok / failed | wall, s | launches/s | to container output, s (median / max) |"
        );
        let _ = writeln!(md, "|---|---|---:|---|---:|---:|---:|");
        for p in parallel {
            let ok = p.launches.iter().filter(|l| l.error.is_none()).count();
            let output = p
                .first_output_ms
                .map(|o| format!("{} / {}", s(o.median), s(o.max)))
                .unwrap_or_else(|| "n/a".into());
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} / {} | {} | {:.3}{} | {} |",
                p.vmm,
                workload_name(&p.workload),
                p.parallel,
                ok,
                p.launches.len() - ok,
                s(p.wall_ms),
                p.launches_per_second,
                if p.error.is_some() { " (errors)" } else { "" },
                output
            );
        }
    }
    md
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers a TTF font for the chart's text; false when none is found
/// (the chart is then drawn without text).
fn register_font() -> bool {
    use plotters::style::{register_font, FontStyle};
    use std::sync::OnceLock;
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        for p in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(p) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Colors of the phases, in [`PHASES`] order.
const COLORS: [(u8, u8, u8); 5] = [
    (120, 120, 120),
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
];

/// Draws the phase breakdown (median phase durations stacked) per row as a
/// horizontal bar chart into `path` (PNG). Returns whether text was drawn.
pub fn chart(rows: &[RowSummary], title: &str, path: &Path) -> anyhow::Result<bool> {
    use plotters::prelude::*;

    let text = register_font();
    let width = 1000u32;
    let row_h = 46u32;
    let top = 56u32;
    let legend_h = 60u32;
    let height = top + row_h * rows.len().max(1) as u32 + 40 + legend_h;
    let left = 250i32;
    let right = 90i32;
    let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let font = |size: i32| ("sans-serif", size).into_font();

    let total = |r: &RowSummary| -> f64 {
        PHASES
            .iter()
            .filter_map(|(k, _)| r.phases.get(*k).map(|p| p.duration_ms.median))
            .sum()
    };
    let max_ms = rows.iter().map(total).fold(0.0, f64::max).max(1.0);
    // A round tick step (at most 6 ticks) and axis end, in seconds.
    let raw = max_ms / 1e3;
    let step = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
    ]
    .into_iter()
    .find(|st| raw / st <= 6.0)
    .unwrap_or(600.0);
    let ticks = (raw / step).ceil().max(1.0) as usize;
    let max_s = ticks as f64 * step;
    let plot_w = (width as i32 - left - right) as f64;
    let x = |ms: f64| left + ((ms / 1e3) / max_s * plot_w).round() as i32;

    if text {
        root.draw(&Text::new(title.to_string(), (20, 14), font(20)))?;
    }
    // Grid and axis labels.
    let axis_y = (top + row_h * rows.len() as u32) as i32 + 4;
    for i in 0..=ticks {
        let ms = step * 1e3 * i as f64;
        let gx = x(ms);
        root.draw(&PathElement::new(
            vec![(gx, top as i32 - 6), (gx, axis_y)],
            RGBColor(220, 220, 220),
        ))?;
        if text {
            root.draw(&Text::new(
                format!("{} s", ms / 1e3),
                (gx - 14, axis_y + 6),
                font(13),
            ))?;
        }
    }
    for (i, r) in rows.iter().enumerate() {
        let y0 = (top + row_h * i as u32) as i32 + 8;
        let y1 = y0 + row_h as i32 - 16;
        let mut acc = 0.0;
        for (j, (key, _)) in PHASES.iter().enumerate() {
            if let Some(p) = r.phases.get(*key) {
                let d = p.duration_ms.median;
                let (cr, cg, cb) = COLORS[j % COLORS.len()];
                let x0 = x(acc);
                let x1 = x(acc + d).max(x0 + 1);
                root.draw(&Rectangle::new(
                    [(x0, y0), (x1, y1)],
                    RGBColor(cr, cg, cb).filled(),
                ))?;
                acc += d;
            }
        }
        if text {
            root.draw(&Text::new(
                r.vmm.clone(),
                (12, y0 + 2),
                font(15).style(FontStyle::Normal),
            ))?;
            root.draw(&Text::new(
                workload_name(&r.workload).to_string(),
                (12, y0 + 19),
                font(12).color(&RGBColor(90, 90, 90)),
            ))?;
            let end = if r.phases.is_empty() {
                format!("no data ({} failed)", r.launches_failed)
            } else {
                format!("{:.1} s", acc / 1e3)
            };
            root.draw(&Text::new(end, (x(acc) + 6, y0 + 8), font(13)))?;
        }
    }
    // Legend.
    let ly = axis_y + 30;
    let mut lx = 20;
    for (j, (_, label)) in PHASES.iter().enumerate() {
        let (cr, cg, cb) = COLORS[j % COLORS.len()];
        root.draw(&Rectangle::new(
            [(lx, ly), (lx + 14, ly + 14)],
            RGBColor(cr, cg, cb).filled(),
        ))?;
        if text {
            root.draw(&Text::new(label.to_string(), (lx + 20, ly), font(13)))?;
        }
        lx += 190;
    }
    root.present()?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(vmm: &str, workload: &str, iteration: usize, marks: &[(&str, f64)]) -> LaunchRecord {
        LaunchRecord {
            vmm: vmm.into(),
            workload: workload.into(),
            iteration,
            marks_ms: marks.iter().map(|(k, v)| ((*k).into(), *v)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn capsa_launch_against_the_reference_boot_per_iteration() {
        let launches = vec![
            rec(
                "capsa",
                "launch",
                0,
                &[("init", 5.0), ("first_output", 10.0)],
            ),
            rec(crate::vmms::REFERENCE, "boot", 0, &[("init", 20.0)]),
            rec(
                "capsa",
                "launch",
                1,
                &[("init", 6.0), ("first_output", 12.0)],
            ),
            rec(crate::vmms::REFERENCE, "boot", 1, &[("init", 16.0)]),
            // No reference launch in iteration 2: no pair.
            rec("capsa", "launch", 2, &[("first_output", 1.0)]),
        ];
        let r = reference_ratios(&launches);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].pairs, 2);
        assert_eq!((r[0].min_ratio, r[0].max_ratio), (0.5, 0.75));
        assert_eq!(r[1].max_ratio, 6.0 / 16.0);
        assert!(reference_ratios(&launches[..1]).is_empty());
    }

    #[test]
    fn smp_speedup_is_one_thread_over_two() {
        let mut l = rec("capsa", "smp", 0, &[]);
        l.extra_ms.insert("one_thread".into(), 3000.0);
        l.extra_ms.insert("two_threads".into(), 1600.0);
        let mut failed = l.clone();
        failed.error = Some("x".into());
        let r = smp_speedup(&[l, failed]);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].pairs, 1);
        assert!((r[0].median_ratio - 1.875).abs() < 1e-9);
    }

    fn round(workload: &str, k: usize, wall_ms: f64, outputs: &[f64]) -> ParallelRecord {
        let launches: Vec<LaunchRecord> = outputs
            .iter()
            .enumerate()
            .map(|(i, o)| rec("capsa", workload, i, &[("first_output", *o)]))
            .collect();
        ParallelRecord {
            vmm: "capsa".into(),
            workload: workload.into(),
            parallel: k,
            wall_ms,
            launches_per_second: launches.len() as f64 / (wall_ms / 1e3),
            first_output_ms: summarize(outputs),
            launches,
            error: None,
        }
    }

    #[test]
    fn parallel_rounds_warm_against_cold() {
        let mut warm = round("launch-warm", 2, 10_000.0, &[4000.0, 8000.0]);
        let cold = round("launch", 2, 40_000.0, &[20_000.0, 40_000.0]);
        let boot = round("boot", 2, 30_000.0, &[]);
        let r = parallel_warm_ratios(&[boot.clone(), cold.clone(), warm.clone()]);
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(r[0].what, "2 at once: launches/s");
        assert!((r[0].median_ratio - 4.0).abs() < 1e-9);
        assert_eq!((r[1].pairs, r[1].min_ratio, r[1].max_ratio), (2, 0.2, 0.2));
        // A warm launch that failed (e.g. not restored) is not counted.
        warm.launches[1].error = Some("not restored".into());
        assert_eq!(parallel_warm_ratios(&[cold.clone(), warm])[1].pairs, 1);
        // No cold round at that K: no ratio.
        assert!(parallel_warm_ratios(&[round("launch-warm", 4, 1.0, &[1.0]), cold]).is_empty());
        let md = markdown(
            &[],
            &[],
            &[boot, round("launch-warm", 2, 10_000.0, &[4000.0, 8000.0])],
            "m",
        );
        assert!(
            md.contains(
                "| capsa | container launch, warm | 2 | 2 / 0 | 10.00 | 0.200 | 6.00 / 8.00 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| capsa | boot comparison | 2 | 0 / 0 | 30.00 | 0.000 | n/a |"),
            "{md}"
        );
    }

    #[test]
    fn parallel_records_of_earlier_runs_still_load() {
        // As written before the launch rounds: no first_output_ms.
        let old = r#"{"vmm":"capsa","workload":"boot","parallel":2,"wall_ms":35090.0,
            "launches_per_second":0.057,"launches":[],"error":null}"#;
        let p: ParallelRecord = serde_json::from_str(old).unwrap();
        assert!(p.first_output_ms.is_none());
        assert!(markdown(&[], &[], &[p], "m").contains("| 35.09 | 0.057 | n/a |"));
    }
}
