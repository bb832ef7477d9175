//! The allowed dependency directions of ARCHITECTURE.md ("Layers"), checked against the
//! imports in `src/`: the pure bottom (`ids`, `journal`, `core`), storage, and the runtime's
//! lower half (the invoker, timers, invocations, the schema) import nothing above them, and only storage
//! imports fjall.

use std::path::{Path, PathBuf};

/// A module (file or folder under `src/`) and the crate modules it may import.
const LOWER_LAYERS: &[(&str, &[&str])] = &[
    ("ids.rs", &[]),
    ("journal", &["ids"]),
    ("core", &["ids", "journal", "core"]),
    ("storage", &["ids", "journal", "core", "storage"]),
    // An attempt reaches the node only through `invoker::AttemptHost`.
    ("invoker", &["ids", "journal", "core", "storage", "invoker"]),
    // The timer loop hands due timers to a callback.
    ("timers.rs", &["storage"]),
    ("invocation", &["ids", "journal", "core", "storage", "invocation"]),
    ("schema", &["core", "storage", "invoker", "schema"]),
];

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
fn lower_layers_import_only_what_is_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, allowed) in LOWER_LAYERS {
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
fn only_storage_imports_fjall() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let storage = src.join("storage");
    let wrong: Vec<String> = sources(&src)
        .into_iter()
        .filter(|f| !f.starts_with(&storage))
        .filter(|f| std::fs::read_to_string(f).expect("readable").contains("fjall::"))
        .map(|f| f.display().to_string())
        .collect();
    assert!(wrong.is_empty(), "fjall used outside src/storage: {wrong:?}");
}
