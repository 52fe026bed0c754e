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
pub fn render(
    header: &ReportHeader<'_>,
    symbols: &Symbols,
    samples: &[Sample],
    slice: Duration,
) -> String {
    let mut out = String::new();
    render_header(&mut out, header, symbols, samples);
    render_rankings(&mut out, symbols, samples);
    render_timeline(&mut out, symbols, samples, slice);
    render_samples(&mut out, symbols, samples);
    out
}

fn render_header(
    out: &mut String,
    header: &ReportHeader<'_>,
    symbols: &Symbols,
    samples: &[Sample],
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
        "# {} samples of {} vCPU(s), one per vCPU every {} ms, up to {:.3} s after the VMM started",
        samples.len(),
        header.vcpus,
        header.interval.as_millis(),
        span.as_secs_f64()
    );
}

/// The flat ranking, then the inclusive one (callers from stack words).
fn render_rankings(out: &mut String, symbols: &Symbols, samples: &[Sample]) {
    let _ = writeln!(
        out,
        "#\n# where the time went (all vCPUs)\n# samples  share  where"
    );
    for (name, n) in ranked(symbols, samples.iter()) {
        let _ = writeln!(out, "{n:9} {:5.1}%  {name}", percent(n, samples.len()));
    }

    let _ = writeln!(
        out,
        "#\n# where the time went, including callers (approximate): samples whose\n\
         # instruction pointer or kernel stack is in the function\n# samples  share  function"
    );
    for (name, n) in ranked_inclusive(symbols, samples)
        .into_iter()
        .take(INCLUSIVE_ROWS)
    {
        let _ = writeln!(out, "{n:9} {:5.1}%  {name}", percent(n, samples.len()));
    }
}

/// Per time slice and vCPU, the three places with most samples.
fn render_timeline(out: &mut String, symbols: &Symbols, samples: &[Sample], slice: Duration) {
    let slice = slice.max(Duration::from_millis(1));
    let _ = writeln!(
        out,
        "#\n# timeline: per {} ms and vCPU, the three places with most samples\n\
         # from_s  vCPU  samples  top",
        slice.as_millis()
    );
    let mut slices: BTreeMap<(u128, u8), Vec<&Sample>> = BTreeMap::new();
    for s in samples {
        slices
            .entry((s.at.as_nanos() / slice.as_nanos(), s.cpu))
            .or_default()
            .push(s);
    }
    for ((i, cpu), in_slice) in &slices {
        let top: Vec<String> = ranked(symbols, in_slice.iter().copied())
            .into_iter()
            .take(3)
            .map(|(name, n)| format!("{name} {:.0}%", percent(n, in_slice.len())))
            .collect();
        let _ = writeln!(
            out,
            "{:8.2}  {cpu:4}  {:7}  {}",
            (slice.as_secs_f64() * *i as f64),
            in_slice.len(),
            top.join(", ")
        );
    }
}

/// Every sample, one per line.
fn render_samples(out: &mut String, symbols: &Symbols, samples: &[Sample]) {
    let _ = writeln!(
        out,
        "#\n# samples\n# seconds  vCPU  rip  cpl  where  [<- callers, nearest first]"
    );
    for s in samples {
        let (rip, cpl) = match s.what {
            Where::Running { rip, cpl } => (format!("{rip:016x}"), cpl.to_string()),
            _ => ("-".into(), "-".into()),
        };
        let _ = write!(
            out,
            "{:.3} {} {rip} {cpl} {}",
            s.at.as_secs_f64(),
            s.cpu,
            label(symbols, &s.what)
        );
        for name in callers(symbols, s).iter().take(SAMPLE_CALLERS) {
            let _ = write!(out, " <- {name}");
        }
        out.push('\n');
    }
}

/// Rows of the inclusive ranking.
const INCLUSIVE_ROWS: usize = 120;
/// Callers printed per sample line.
const SAMPLE_CALLERS: usize = 12;

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

/// Functions with the number of samples whose instruction pointer or
/// stack is in them, most first.
fn ranked_inclusive<'a>(symbols: &'a Symbols, samples: &[Sample]) -> Vec<(&'a str, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in samples {
        *counts.entry(label(symbols, &s.what)).or_default() += 1;
        for name in callers(symbols, s) {
            *counts.entry(name).or_default() += 1;
        }
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

/// Labels with their sample counts, most first (ties by name).
fn ranked<'a, 's>(
    symbols: &'a Symbols,
    samples: impl Iterator<Item = &'s Sample>,
) -> Vec<(&'a str, usize)> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for s in samples {
        *counts.entry(label(symbols, &s.what)).or_default() += 1;
    }
    let mut v: Vec<_> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v
}

fn percent(n: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        100.0 * n as f64 / of as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(ms: u64, cpu: u8, what: Where) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            cpu,
            what,
            stack: Vec::new(),
        }
    }

    #[test]
    fn report_ranks_functions_and_keeps_every_sample() {
        let symbols = Symbols::parse(
            "ffffffff81000000 T start_kernel\nffffffff81001000 T clear_page\nffffffff82000000 B _end\n",
        );
        let k = |rip| Where::Running { rip, cpl: 0 };
        let samples = vec![
            sample(10, 0, k(0xffff_ffff_8100_0010)),
            sample(10, 1, Where::NotStarted),
            Sample {
                stack: vec![0xffff_ffff_8100_1000, 0xffff_ffff_8100_0020, 0x1234],
                ..sample(20, 0, k(0xffff_ffff_8100_1010))
            },
            sample(30, 0, k(0xffff_ffff_8100_1020)),
            sample(
                1500,
                0,
                Where::Running {
                    rip: 0x40_0000,
                    cpl: 3,
                },
            ),
            sample(1500, 1, k(0xffff_ffff_9000_0000)),
        ];
        let header = ReportHeader {
            kernel: Path::new("/k/vmlinux"),
            system_map: Some(Path::new("/k/System.map")),
            interval: Duration::from_millis(10),
            vcpus: 2,
        };
        let text = render(&header, &symbols, &samples, Duration::from_secs(1));
        let ranking: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("# samples  share"))
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .collect();
        assert_eq!(ranking.len(), 5, "{text}");
        assert!(
            ranking[0].ends_with("clear_page") && ranking[0].contains("33.3%"),
            "{text}"
        );
        assert!(text.contains(NOT_STARTED) && text.contains(USER) && text.contains(UNNAMED));
        assert!(
            text.contains("    1.00     0        1  [user mode] 100%"),
            "{text}"
        );
        assert!(
            text.contains("0.020 0 ffffffff81001010 0 clear_page <- start_kernel\n"),
            "{text}"
        );
        // Inclusive: start_kernel is in 2 of 6 samples (once as the
        // instruction pointer, once on a stack).
        assert!(text.contains("        2  33.3%  start_kernel\n"), "{text}");
        assert!(text.contains("0.010 1 - - [vCPU not started]"), "{text}");
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
