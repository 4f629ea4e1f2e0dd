//! The cluster layer, the KV layer and the server have no import cycles among their modules: each module's `crate::`
//! references (code, tests and doc links alike) point one way, so a leaf module (`types`, `wire`,
//! `error`) can be read, changed and tested without the rest. Files a module includes with
//! `#[path = "…"] mod …;` count as part of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every `.rs` file under `dir`, concatenated.
fn all_text(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            text.push_str(&all_text(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            text.push_str(&std::fs::read_to_string(&path).unwrap());
        }
    }
    text
}

/// Module → the crate modules it references (a directory module with everything under it).
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut texts = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            texts.insert(name, all_text(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            texts.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    // `#[path = "child.rs"] mod x;` in `parent.rs`: child belongs to parent.
    let mut parent = BTreeMap::new();
    for (name, text) in &texts {
        for part in text.split("#[path = \"").skip(1) {
            if let Some((file, _)) = part.split_once(".rs\"") {
                parent.insert(file.to_string(), name.clone());
            }
        }
    }
    let owner = |m: &str| {
        let mut m = m.to_string();
        while let Some(p) = parent.get(&m) {
            m = p.clone();
        }
        m
    };
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, text) in &texts {
        let from = owner(name);
        for part in text.split("crate::").skip(1) {
            let to: String = part.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
            let to = owner(&to);
            if texts.contains_key(&to) && to != from && to != "lib" {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut c = path[at..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if !done.insert(n.to_string()) {
            return None;
        }
        path.push(n.to_string());
        for d in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_server_the_kv_layer_and_the_cluster_layer_have_no_module_import_cycles() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    for name in ["cairn-server", "cairn-kv", "cairn-cluster"] {
        let edges = graph(&crates.join(name).join("src"));
        assert!(edges.len() >= 3, "{name}: the graph looks empty: {edges:?}");
        if let Some(c) = cycle(&edges) {
            panic!("{name}: modules import each other in a circle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}
