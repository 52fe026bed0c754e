//! docs/architecture.md names only what exists: every path in backquotes
//! (`vmm/src/runtime/vm/create.rs`) is a file or directory of the
//! repository, every type (`VmmInputs`, `VmSpec::from_bundle`) is defined
//! in the code with its method, and every snake_case function name
//! (`plan_machine`) is a function. No guest is booted.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The text of every `.rs` file under the crates' `src/` directories.
fn sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    let mut out = String::new();
    for krate in ["vmm", "devices", "guest-agent", "jailer"] {
        walk(&repo().join(krate).join("src"), &mut out);
    }
    out
}

/// The backquoted spans of `text` (outside fenced code blocks).
fn code_spans(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let (Some(span), Some(_)) = (parts.next(), parts.next()) {
            spans.push(span.to_string());
        }
    }
    spans
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn defines(src: &str, kind: &[&str], name: &str) -> bool {
    kind.iter().any(|k| {
        src.contains(&format!("{k} {name}<"))
            || src.contains(&format!("{k} {name} "))
            || src.contains(&format!("{k} {name}("))
            || src.contains(&format!("{k} {name};"))
    })
}

#[test]
fn architecture_names_what_exists() {
    let doc = std::fs::read_to_string(repo().join("docs/architecture.md")).unwrap();
    let src = sources();
    let types = ["struct", "enum", "trait", "type"];
    let mut missing = Vec::new();
    let mut checked = 0;
    for span in code_spans(&doc) {
        if span.contains('/') && !span.contains(' ') && !span.starts_with('-') {
            checked += 1;
            if !repo().join(span.trim_end_matches('/')).exists() {
                missing.push(format!("path {span}"));
            }
            continue;
        }
        let mut segments = span.split("::");
        let first = segments.next().unwrap_or_default();
        let rest: Vec<&str> = segments.collect();
        let camel = first.starts_with(|c: char| c.is_ascii_uppercase())
            && first.chars().any(|c| c.is_ascii_lowercase());
        if camel && is_ident(first) && rest.iter().all(|s| is_ident(s)) {
            checked += 1;
            if !defines(&src, &types, first) {
                missing.push(format!("type {first}"));
            }
            for method in rest {
                if !defines(&src, &["fn"], method) {
                    missing.push(format!("function {first}::{method}"));
                }
            }
        } else if first.contains('_')
            && rest.is_empty()
            && first.starts_with(|c: char| c.is_ascii_lowercase())
            && is_ident(first)
        {
            checked += 1;
            if !defines(&src, &["fn"], first) {
                missing.push(format!("function {first}"));
            }
        }
    }
    assert!(
        checked > 30,
        "only {checked} names checked: is the parser right?"
    );
    assert!(
        missing.is_empty(),
        "docs/architecture.md names what does not exist: {missing:#?}"
    );
}
