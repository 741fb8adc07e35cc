//! Where a backfill reads from: the file format, and the files a source
//! names (a file, a directory, or a `*`/`?` pattern in the last component).

use std::fmt;
use std::path::{Path, PathBuf};

/// The formats a backfill reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet, read by DataFusion.
    Parquet,
    /// CSV with a header row, read by DataFusion with every column as text.
    Csv,
    /// One event object per line, read by the workers' own decoder.
    Ndjson,
}

impl Format {
    /// Reads `parquet`, `csv` or `ndjson`; `field` names the flag in the error.
    pub fn parse(field: &str, text: &str) -> Result<Format, String> {
        match text {
            "parquet" => Ok(Format::Parquet),
            "csv" => Ok(Format::Csv),
            "ndjson" | "jsonl" => Ok(Format::Ndjson),
            other => Err(format!("`{field}` = {other:?}: must be parquet, csv or ndjson")),
        }
    }

    /// The format a file name's extension implies.
    pub fn of_path(path: &str) -> Option<Format> {
        let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        match name.rsplit_once('.')?.1 {
            "parquet" | "pq" => Some(Format::Parquet),
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Parquet => "parquet",
            Format::Csv => "csv",
            Format::Ndjson => "ndjson",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The files `source` names, sorted, with their sizes in bytes.
///
/// Fails, naming the source, when it matches nothing, cannot be listed, or
/// is an object-store URL (not supported by this build).
pub fn list_files(source: &str) -> Result<Vec<(String, u64)>, String> {
    let path = source.strip_prefix("file://").unwrap_or(source);
    if path.contains("://") {
        return Err(format!(
            "source {source:?}: object-store URLs are not supported by this build; copy or mount the files and pass a local path or pattern"
        ));
    }
    let path = Path::new(path);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut files = Vec::new();
    if name.contains(['*', '?']) {
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        for entry in read_dir(dir, source)? {
            if entry.file_name().and_then(|n| n.to_str()).is_some_and(|n| matches(name.as_bytes(), n.as_bytes())) {
                files.push(entry);
            }
        }
    } else if path.is_dir() {
        files = read_dir(path, source)?;
    } else if path.is_file() {
        files.push(path.to_path_buf());
    } else {
        return Err(format!("source {source:?}: no such file or directory"));
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("source {source:?} matches no files"));
    }
    files
        .into_iter()
        .map(|f| {
            let size = std::fs::metadata(&f).map_err(|e| format!("{}: {e}", f.display()))?.len();
            Ok((f.to_string_lossy().into_owned(), size))
        })
        .collect()
}

/// The regular, non-hidden files directly inside `dir`.
fn read_dir(dir: &Path, source: &str) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("source {source:?}: cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("source {source:?}: {e}"))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()) {
            files.push(entry.path());
        }
    }
    Ok(files)
}

/// Shell-style match of `*` (any run) and `?` (one byte).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => matches(&pattern[1..], name) || (!name.is_empty() && matches(pattern, &name[1..])),
        (Some(b'?'), Some(_)) => matches(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => matches(&pattern[1..], &name[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_a_shell() {
        assert!(matches(b"*.parquet", b"part-1.parquet"));
        assert!(matches(b"day-??.csv", b"day-07.csv"));
        assert!(!matches(b"*.csv", b"x.csv.bak"));
        assert!(!matches(b"day-?.csv", b"day-10.csv"));
    }

    #[test]
    fn sources_list_sorted_files_or_say_why_not() {
        let dir = std::env::temp_dir().join(format!("tally-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["b.csv", "a.csv", "c.parquet", ".hidden.csv"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let names = |source: &str| list_files(source).unwrap().into_iter().map(|(f, _)| f.rsplit('/').next().unwrap().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(&format!("{}/*.csv", dir.display())), ["a.csv", "b.csv"]);
        assert_eq!(names(dir.to_str().unwrap()), ["a.csv", "b.csv", "c.parquet"]);
        assert!(list_files(&format!("{}/*.ndjson", dir.display())).unwrap_err().contains("matches no files"));
        assert!(list_files("s3://bucket/x").unwrap_err().contains("object-store"));
        assert_eq!(Format::of_path("x/y.PARQUET"), Some(Format::Parquet));
        assert!(Format::parse("--format", "xml").unwrap_err().contains("`--format`"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
