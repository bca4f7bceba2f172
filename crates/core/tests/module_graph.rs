//! The core's module graph follows ownership: no two modules import each other, directly or
//! through others (a module may use its own children; children reach their parent only through
//! the types it hands them). Checked from the sources, so a new cycle fails `cargo test`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`relay::link`) -> the crate modules its non-test code names (`crate::x::y`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let mut modules = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(&src).unwrap().with_extension("");
        let mut name = rel.to_string_lossy().replace('/', "::");
        if name == "lib" {
            continue;
        }
        if let Some(parent) = name.strip_suffix("::mod") {
            name = parent.to_string();
        }
        let text = std::fs::read_to_string(&f).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let mut uses = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let path: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == ':')
                .collect();
            uses.insert(path.trim_end_matches(':').to_string());
        }
        modules.insert(name, uses);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(m, uses)| {
            let deps = uses
                .iter()
                .filter_map(|u| {
                    // The longest module path the use names.
                    let parts: Vec<&str> = u.split("::").collect();
                    (1..=parts.len())
                        .rev()
                        .map(|n| parts[..n].join("::"))
                        .find(|p| names.contains(p))
                })
                .filter(|d| d != m)
                .collect();
            (m.clone(), deps)
        })
        .collect()
}

/// A path from `from` back to `to`, if any.
fn path_back(
    g: &BTreeMap<String, BTreeSet<String>>,
    from: &str,
    to: &str,
    seen: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if from == to {
        return Some(vec![to.to_string()]);
    }
    if !seen.insert(from.to_string()) {
        return None;
    }
    for next in g.get(from).into_iter().flatten() {
        if let Some(mut p) = path_back(g, next, to, seen) {
            p.insert(0, from.to_string());
            return Some(p);
        }
    }
    None
}

#[test]
fn no_module_imports_itself_through_others() {
    let g = graph();
    assert!(
        g.contains_key("relay::link") && g.contains_key("node::dial"),
        "{g:?}"
    );
    let mut cycles = Vec::new();
    for (m, deps) in &g {
        for d in deps {
            if let Some(p) = path_back(&g, d, m, &mut BTreeSet::new()) {
                cycles.push(format!("{m} -> {}", p.join(" -> ")));
            }
        }
    }
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}
