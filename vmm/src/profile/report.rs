//! The profile report: a text file with where the time went (samples per
//! function, all vCPUs together), a timeline (the busiest functions of
//! each vCPU per slice of time), and every sample, one per line, for
//! `awk`/`sort` on a chosen time window.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::symbols::Symbols;
use super::{Sample, Where};

/// Label of samples in guest user mode.
pub const USER: &str = "[user mode]";
/// Label of application processors the guest has not started yet.
pub const NOT_STARTED: &str = "[vCPU not started]";
/// Label of kernel-mode addresses that `System.map` does not name.
pub const UNNAMED: &str = "[kernel, not in System.map]";
/// Label of samples whose registers could not be read.
pub const UNKNOWN: &str = "[registers unreadable]";

/// What the report says about its inputs.
#[derive(Debug, Clone)]
pub struct ReportHeader<'a> {
    /// The guest kernel.
    pub kernel: &'a Path,
    /// The `System.map` used, if any.
    pub system_map: Option<&'a Path>,
    /// Sampling interval.
    pub interval: Duration,
    /// Number of vCPUs.
    pub vcpus: u8,
}

/// The label of one sample.
pub fn label<'a>(symbols: &'a Symbols, what: &Where) -> &'a str {
    match what {
        Where::Running { cpl: 3, .. } => USER,
        Where::Running { rip, .. } => symbols.name(*rip).unwrap_or(UNNAMED),
        Where::NotStarted => NOT_STARTED,
        Where::Unknown => UNKNOWN,
    }
}

/// Renders the report. `slice` is the timeline's time step.
///
/// Each sample stands for the vCPU thread's CPU time since the previous
/// sample of the same vCPU (its *weight*): the rankings add weights, so
/// they estimate what each function cost the host even when the vCPU
/// thread waited for a host CPU between samples.
pub fn render(
    header: &ReportHeader<'_>,
    symbols: &Symbols,
    samples: &[Sample],
    slice: Duration,
) -> String {
    let mut out = String::new();
    let weights = weights(samples);
    let total: Duration = weights.iter().sum();
    render_header(&mut out, header, symbols, samples, total);
    render_rankings(&mut out, symbols, samples, &weights, total);
    render_timeline(&mut out, symbols, samples, &weights, slice);
    render_samples(&mut out, symbols, samples);
    out
}

fn render_header(
    out: &mut String,
    header: &ReportHeader<'_>,
    symbols: &Symbols,
    samples: &[Sample],
    total: Duration,
) {
    let span = samples.last().map(|s| s.at).unwrap_or_default();
    let _ = writeln!(out, "# capsa guest profile");
    let _ = writeln!(out, "# kernel: {}", header.kernel.display());
    let _ = writeln!(
        out,
        "# symbols: {}",
        header
            .system_map
            .map(|p| format!("{} ({} text symbols)", p.display(), symbols.len()))
            .unwrap_or_else(|| "none (no System.map)".into())
    );
    let _ = writeln!(
        out,
        "# {} samples of {} vCPU(s), one per vCPU every {} ms, up to {:.3} s after the VMM \
         started; {:.3} s of vCPU thread CPU time",
        samples.len(),
        header.vcpus,
        header.interval.as_millis(),
        span.as_secs_f64(),
        total.as_secs_f64()
    );
}

/// The flat ranking, then the inclusive one (callers from stack words).
fn render_rankings(
    out: &mut String,
    symbols: &Symbols,
    samples: &[Sample],
    weights: &[Duration],
    total: Duration,
) {
    let _ = writeln!(
        out,
        "#\n# where the time went (all vCPUs): vCPU thread CPU time, by the place of each sample\n\
         # cpu_s   share  samples  where"
    );
    let flat = ranked(
        samples
            .iter()
            .zip(weights)
            .map(|(s, w)| (vec![label(symbols, &s.what)], *w)),
    );
    for (name, cpu, n) in flat {
        row(out, cpu, total, n, name);
    }

    let _ = writeln!(
        out,
        "#\n# where the time went, including callers (approximate): CPU time of the samples\n\
         # whose instruction pointer or kernel stack is in the function\n\
         # cpu_s   share  samples  function"
    );
    let inclusive = ranked(samples.iter().zip(weights).map(|(s, w)| {
        let mut names = vec![label(symbols, &s.what)];
        names.extend(callers(symbols, s));
        (names, *w)
    }));
    for (name, cpu, n) in inclusive.into_iter().take(INCLUSIVE_ROWS) {
        row(out, cpu, total, n, name);
    }
}

/// Per time slice and vCPU: its CPU time and the three places with most.
fn render_timeline(
    out: &mut String,
    symbols: &Symbols,
    samples: &[Sample],
    weights: &[Duration],
    slice: Duration,
) {
    let slice = slice.max(Duration::from_millis(1));
    let _ = writeln!(
        out,
        "#\n# timeline: per {} ms and vCPU, its CPU time and the three places with most\n\
         # from_s  vCPU  samples  cpu_ms  top",
        slice.as_millis()
    );
    let mut slices: BTreeMap<(u128, u8), Vec<(&Sample, Duration)>> = BTreeMap::new();
    for (s, w) in samples.iter().zip(weights) {
        slices
            .entry((s.at.as_nanos() / slice.as_nanos(), s.cpu))
            .or_default()
            .push((s, *w));
    }
    for ((i, cpu), in_slice) in &slices {
        let cpu_time: Duration = in_slice.iter().map(|(_, w)| *w).sum();
        let top: Vec<String> = ranked(
            in_slice
                .iter()
                .map(|(s, w)| (vec![label(symbols, &s.what)], *w)),
        )
        .into_iter()
        .take(3)
        .map(|(name, cpu, _)| format!("{name} {:.0}%", percent(cpu, cpu_time)))
        .collect();
        let _ = writeln!(
            out,
            "{:8.2}  {cpu:4}  {:7}  {:6.0}  {}",
            (slice.as_secs_f64() * *i as f64),
            in_slice.len(),
            cpu_time.as_secs_f64() * 1e3,
            top.join(", ")
        );
    }
}

/// Every sample, one per line.
fn render_samples(out: &mut String, symbols: &Symbols, samples: &[Sample]) {
    let _ = writeln!(
        out,
        "#\n# samples\n# seconds  vCPU  cpu_s  rip  cpl  where  [<- callers, nearest first]"
    );
    for s in samples {
        let (rip, cpl) = match s.what {
            Where::Running { rip, cpl } => (format!("{rip:016x}"), cpl.to_string()),
            _ => ("-".into(), "-".into()),
        };
        let _ = write!(
            out,
            "{:.3} {} {:.3} {rip} {cpl} {}",
            s.at.as_secs_f64(),
            s.cpu,
            s.cpu_time.as_secs_f64(),
            label(symbols, &s.what)
        );
        for name in callers(symbols, s).iter().take(SAMPLE_CALLERS) {
            let _ = write!(out, " <- {name}");
        }
        out.push('\n');
    }
}

/// One ranking row.
fn row(out: &mut String, cpu: Duration, total: Duration, samples: usize, name: &str) {
    let _ = writeln!(
        out,
        "{:7.3} {:6.1}%  {samples:7}  {name}",
        cpu.as_secs_f64(),
        percent(cpu, total)
    );
}

/// Rows of the inclusive ranking.
const INCLUSIVE_ROWS: usize = 150;
/// Callers printed per sample line.
const SAMPLE_CALLERS: usize = 24;

/// The weight of each sample: its vCPU thread's CPU time since the
/// previous sample of the same vCPU (since the thread started, for the
/// first one).
fn weights(samples: &[Sample]) -> Vec<Duration> {
    let mut last: HashMap<u8, Duration> = HashMap::new();
    samples
        .iter()
        .map(|s| {
            let prev = last.insert(s.cpu, s.cpu_time).unwrap_or_default();
            s.cpu_time.saturating_sub(prev)
        })
        .collect()
}

/// The distinct functions named by a sample's stack words, nearest first,
/// without the function the sample is in.
fn callers<'a>(symbols: &'a Symbols, s: &Sample) -> Vec<&'a str> {
    let own = match s.what {
        Where::Running { rip, cpl: 0 } => symbols.name(rip),
        _ => None,
    };
    let mut names: Vec<&str> = Vec::new();
    for w in &s.stack {
        if let Some(name) = symbols.name(*w) {
            if Some(name) != own && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Names with the CPU time and the number of samples they appear in
/// (each name counted once per sample), most CPU time first (ties by
/// name).
fn ranked<'a>(
    samples: impl Iterator<Item = (Vec<&'a str>, Duration)>,
) -> Vec<(&'a str, Duration, usize)> {
    let mut counts: HashMap<&str, (Duration, usize)> = HashMap::new();
    for (names, w) in samples {
        let mut seen: Vec<&str> = Vec::with_capacity(names.len());
        for name in names {
            if seen.contains(&name) {
                continue;
            }
            seen.push(name);
            let e = counts.entry(name).or_default();
            e.0 += w;
            e.1 += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().map(|(k, (c, n))| (k, c, n)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(b.2.cmp(&a.2)).then(a.0.cmp(b.0)));
    v
}

fn percent(part: Duration, of: Duration) -> f64 {
    if of.is_zero() {
        0.0
    } else {
        100.0 * part.as_secs_f64() / of.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, cpu: u8, cpu_ms: u64, what: Where) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            cpu,
            cpu_time: Duration::from_millis(cpu_ms),
            what,
            stack: Vec::new(),
        }
    }

    #[test]
    fn report_weighs_samples_by_cpu_time_and_keeps_every_sample() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T start_kernel\nffffffff81001000 T clear_page\nffffffff82000000 B _end\n",
        );
        let k = |rip| Where::Running { rip, cpl: 0 };
        // vCPU 0 uses 10, 10, 20 and 20 ms between its samples; vCPU 1
        // 40 ms and 0 ms.
        let samples = vec![
            sample(10, 0, 10, k(0xffff_ffff_8100_0010)),
            sample(10, 1, 40, Where::NotStarted),
            Sample {
                stack: vec![0xffff_ffff_8100_1000, 0xffff_ffff_8100_0020, 0x1234],
                ..sample(20, 0, 20, k(0xffff_ffff_8100_1010))
            },
            sample(30, 0, 40, k(0xffff_ffff_8100_1020)),
            sample(
                1500,
                0,
                60,
                Where::Running {
                    rip: 0x40_0000,
                    cpl: 3,
                },
            ),
            sample(1500, 1, 40, k(0xffff_ffff_9000_0000)),
        ];
        let header = ReportHeader {
            kernel: Path::new("/k/vmlinux"),
            system_map: Some(Path::new("/k/System.map")),
            interval: Duration::from_millis(10),
            vcpus: 2,
        };
        let text = render(&header, &symbols, &samples, Duration::from_secs(1));
        assert!(text.contains("; 0.100 s of vCPU thread CPU time"), "{text}");
        let ranking: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("# cpu_s   share  samples  where"))
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(ranking.len(), 5, "{text}");
        assert_eq!(
            ranking[0], "  0.040   40.0%        1  [vCPU not started]",
            "{text}"
        );
        assert_eq!(ranking[1], "  0.030   30.0%        2  clear_page", "{text}");
        assert!(text.contains(USER) && text.contains(UNNAMED));
        // Inclusive: start_kernel is in two samples (once as the
        // instruction pointer, once on a stack): 10 + 10 ms.
        assert!(
            text.contains("  0.020   20.0%        2  start_kernel\n"),
            "{text}"
        );
        assert!(
            text.contains("    1.00     0        1      20  [user mode] 100%"),
            "{text}"
        );
        assert!(
            text.contains("0.020 0 0.020 ffffffff81001010 0 clear_page <- start_kernel\n"),
            "{text}"
        );
        assert!(
            text.contains("0.010 1 0.040 - - [vCPU not started]"),
            "{text}"
        );
    }

    #[test]
    fn empty_profile_renders() {
        let header = ReportHeader {
            kernel: Path::new("/k"),
            system_map: None,
            interval: Duration::from_millis(10),
            vcpus: 1,
        };
        let text = render(&header, &Symbols::default(), &[], Duration::from_secs(1));
        assert!(text.contains("0 samples"), "{text}");
    }
}
