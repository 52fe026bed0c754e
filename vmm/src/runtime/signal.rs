//! Signals as `kill` takes them: numbers (`9`) or names with or without
//! the `SIG` prefix, in any case (`KILL`, `SIGKILL`, `sigterm`), and
//! `RTMIN+N`/`RTMAX-N`.

/// Parses a signal; errors name the bad value.
pub fn parse(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("invalid signal {s:?}: numbers are 1 to 64"))
        };
    }
    let upper = t.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off = if rest.is_empty() {
            Ok(0)
        } else {
            rest.trim_start_matches('+').parse::<i32>()
        };
        if let Ok(off) = off.map_err(|_| ()) {
            if rtmin + off <= rtmax {
                return Ok(rtmin + off);
            }
        }
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off = if rest.is_empty() {
            Ok(0)
        } else {
            rest.trim_start_matches('-').parse::<i32>()
        };
        if let Ok(off) = off.map_err(|_| ()) {
            if rtmax - off >= rtmin {
                return Ok(rtmax - off);
            }
        }
    }
    format!("SIG{name}")
        .parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse("9"), Ok(9));
        assert_eq!(parse("KILL"), Ok(9));
        assert_eq!(parse("SIGTERM"), Ok(15));
        assert_eq!(parse("sighup"), Ok(1));
        assert_eq!(parse("RTMIN+1"), Ok(libc::SIGRTMIN() + 1));
        assert!(parse("0").is_err());
        assert!(parse("65").is_err());
        assert!(parse("FOO").is_err());
    }
}
