//! The allowed dependency directions of ARCHITECTURE.md ("Layers"), checked against the
//! imports in `src/`: every module imports only the layers below it (and itself), so the
//! dependencies point one way — from the wiring (`serve`) and the HTTP faces down through the
//! node, the owners and storage to the pure core — and only storage imports fjall.

use std::path::{Path, PathBuf};

/// The pure bottom and storage.
const BASE: &[&str] = &["ids", "config", "journal", "core", "storage"];
/// What an owner may use besides the base: the invoker, timers, invocations, the schema.
const RUNTIME: &[&str] = &["invoker", "timers", "invocation", "schema"];

/// Each module (file or folder under `src/`) with the crate modules it may import. `main.rs`
/// and `serve.rs` (the wiring) may import anything.
fn layers() -> Vec<(&'static str, Vec<&'static str>)> {
    let with = |parts: &[&[&'static str]]| parts.concat();
    vec![
        ("ids.rs", vec![]),
        ("config.rs", vec![]),
        ("journal", vec!["ids", "journal"]),
        ("core", vec!["ids", "journal", "core"]),
        ("storage", vec!["ids", "journal", "core", "storage"]),
        // An attempt reaches the node only through `invoker::AttemptHost`.
        ("invoker", with(&[BASE, &["invoker"]])),
        // The timer loop hands due timers to a callback.
        ("timers.rs", vec!["storage"]),
        ("invocation", with(&[BASE, &["invocation"]])),
        ("schema", with(&[BASE, &["invoker", "schema"]])),
        // Owners reach the node only through `object::OwnerHost`.
        ("object", with(&[BASE, RUNTIME, &["object"]])),
        // What the node reads of placement; changing it is `cluster`, above the node.
        ("placement", with(&[BASE, &["invoker", "placement"]])),
        // The metadata group: only it names openraft.
        (
            "metadata",
            with(&[BASE, &["invoker", "schema", "placement", "metadata"]]),
        ),
        (
            "node",
            with(&[BASE, RUNTIME, &["object", "placement", "metadata", "node"]]),
        ),
        ("http_error.rs", with(&[BASE, &["object"]])),
        (
            "cluster",
            with(&[
                BASE,
                RUNTIME,
                &["object", "placement", "metadata", "node", "http_error", "cluster"],
            ]),
        ),
        (
            "ingress",
            with(&[
                BASE,
                RUNTIME,
                &[
                    "object",
                    "placement",
                    "metadata",
                    "node",
                    "http_error",
                    "cluster",
                    "ingress",
                ],
            ]),
        ),
        (
            "admin",
            with(&[
                BASE,
                RUNTIME,
                &[
                    "object",
                    "placement",
                    "metadata",
                    "node",
                    "http_error",
                    "cluster",
                    "admin",
                ],
            ]),
        ),
    ]
}

fn sources(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).expect("readable src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// Every `crate::<module>` a file names, with its line.
fn crate_imports(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let module: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push((n + 1, module));
        }
    }
    found
}

#[test]
fn every_module_imports_only_what_is_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, allowed) in layers() {
        for file in sources(&src.join(module)) {
            let text = std::fs::read_to_string(&file).expect("readable source");
            for (line, import) in crate_imports(&text) {
                if !allowed.contains(&import.as_str()) {
                    wrong.push(format!("{}:{line} imports crate::{import}", file.display()));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layers:\n{}", wrong.join("\n"));
}

#[test]
fn every_module_has_a_layer() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let placed: Vec<&str> = layers().iter().map(|(m, _)| *m).collect();
    let unplaced: Vec<String> = std::fs::read_dir(&src)
        .expect("readable src")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|name| !["lib.rs", "main.rs", "serve.rs"].contains(&name.as_str()))
        .filter(|name| !placed.contains(&name.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules without a layer in tests/layers.rs: {unplaced:?}"
    );
}

/// Files outside `src/{module}` that name `path` (a crate, e.g. `fjall::`).
fn used_outside(path: &str, module: &str) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let inside = src.join(module);
    sources(&src)
        .into_iter()
        .filter(|f| !f.starts_with(&inside))
        .filter(|f| std::fs::read_to_string(f).expect("readable").contains(path))
        .map(|f| f.display().to_string())
        .collect()
}

#[test]
fn only_metadata_imports_openraft() {
    let wrong = used_outside("openraft::", "metadata");
    assert!(wrong.is_empty(), "openraft used outside src/metadata: {wrong:?}");
}

#[test]
fn only_storage_imports_fjall() {
    let wrong = used_outside("fjall::", "storage");
    assert!(wrong.is_empty(), "fjall used outside src/storage: {wrong:?}");
}
