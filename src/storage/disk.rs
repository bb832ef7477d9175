//! What a failed write means for the operator: a full disk is said so, with the free space of
//! the data directory, instead of the store's internal word for it (fjall reports `Poisoned`
//! for every write after a background flush ran out of space).

use std::path::Path;

/// Below this many free bytes a write failure is taken for a full disk.
const NEARLY_FULL_BYTES: u64 = 64 * 1024 * 1024;

/// The operator's message for a commit that failed with `error` on the disk of `dir`.
pub fn explain_write_failure(error: &str, dir: &Path) -> String {
    explain(error, &dir.display().to_string(), free_bytes(dir))
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn explain(error: &str, dir: &str, free: Option<u64>) -> String {
    let out_of_space = error.contains("No space left on device")
        || error.contains("os error 28")
        || free.is_some_and(|f| f < NEARLY_FULL_BYTES);
    if out_of_space {
        let free = free.map_or("unknown".to_owned(), |f| format!("{f} bytes"));
        format!(
            "the disk holding the data directory {dir} is full (free: {free}; the store said: {error}). \
             The write was not acknowledged. Free space, then start the node again: it recovers \
             everything it acknowledged."
        )
    } else {
        format!("storage write failed in {dir}: {error}")
    }
}

#[cfg(test)]
mod tests {
    use super::explain;

    #[test]
    fn full_disks_are_named_table() {
        let cases: &[(&str, Option<u64>, bool)] = &[
            ("IoError: No space left on device (os error 28)", Some(1 << 30), true),
            ("os error 28", None, true),
            // fjall after a background flush ran out of space.
            ("Poisoned", Some(4096), true),
            ("Poisoned", Some(10 << 30), false),
            ("Poisoned", None, false),
            ("IoError: Input/output error (os error 5)", Some(10 << 30), false),
        ];
        for (error, free, full) in cases {
            let text = explain(error, "/data", *free);
            assert_eq!(text.contains("is full"), *full, "{error} {free:?}: {text}");
            assert!(text.contains(error) && text.contains("/data"), "{text}");
        }
    }
}
