//! Where a backfill reads from: the file format, and the files a source
//! names (a file, a directory, or a `*`/`?` pattern in the last component),
//! on local disk or in S3.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures::stream::{BoxStream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, RetryConfig};
pub use schemas::job::Format;
pub use store::jobs::FileVersion;
use url::Url;

/// The files `source` names, sorted, with their sizes in bytes: local
/// paths as given, objects as `s3://bucket/key` URLs.
///
/// Fails, naming the source, when it matches nothing or cannot be listed.
pub async fn list_files(source: &str) -> Result<Vec<(String, u64)>, String> {
    Ok(list_versions(source)
        .await?
        .into_iter()
        .map(|f| (f.location, f.size as u64))
        .collect())
}

/// Like [`list_files`], with each file's version: an object's ETag, or a
/// local file's modification time in nanoseconds since the Unix epoch.
pub async fn list_versions(source: &str) -> Result<Vec<FileVersion>, String> {
    let files = list_present(source).await?;
    if files.is_empty() {
        return Err(format!("source {source:?} matches no files"));
    }
    Ok(files)
}

/// Like [`list_versions`], but an empty folder or a pattern that matches
/// nothing yet is an empty list: what a watch sees before files arrive.
pub async fn list_present(source: &str) -> Result<Vec<FileVersion>, String> {
    let mut files = match Remote::parse(source)? {
        Some(remote) => remote.list(source).await?,
        None => list_local(source)?,
    };
    files.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(files)
}

/// The current version of one file (a local path or an `s3://` URL).
///
/// Fails, naming the file, when it is gone or cannot be read.
pub async fn stat(location: &str) -> Result<FileVersion, String> {
    match Remote::parse(location)? {
        Some(remote) => {
            let meta = remote
                .store
                .head(&ObjectPath::from(remote.key.as_str()))
                .await
                .map_err(|e| format!("{location}: {}", describe(e)))?;
            Ok(object_version(remote.url(&meta.location), &meta))
        }
        None => local_version(Path::new(
            location.strip_prefix("file://").unwrap_or(location),
        )),
    }
}

/// A local file's content digest (xxh3-128, hex): what tells a file copied
/// or touched again from one rewritten. `None` for an object, whose ETag
/// already changes only with its content.
///
/// Fails, naming the file, when it cannot be read.
pub fn content_digest(location: &str) -> Result<Option<String>, String> {
    if Remote::parse(location)?.is_some() {
        return Ok(None);
    }
    use std::io::Read;
    let path = location.strip_prefix("file://").unwrap_or(location);
    let mut file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut block = vec![0; 1 << 20];
    loop {
        let read = file.read(&mut block).map_err(|e| format!("{path}: {e}"))?;
        if read == 0 {
            break;
        }
        hasher.update(&block[..read]);
    }
    Ok(Some(format!("{:032x}", hasher.digest128())))
}

fn local_version(path: &Path) -> Result<FileVersion, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(FileVersion {
        location: path.to_string_lossy().into_owned(),
        size: meta.len() as i64,
        version: mtime.to_string(),
    })
}

/// An object's version is its ETag without the quotes (the form S3 event
/// notifications carry), or its modification time when the server sends none.
fn object_version(location: String, meta: &object_store::ObjectMeta) -> FileVersion {
    let version = match &meta.e_tag {
        Some(tag) => tag.trim_matches('"').to_owned(),
        None => meta
            .last_modified
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_string(),
    };
    FileVersion {
        location,
        size: meta.size as i64,
        version,
    }
}

fn list_local(source: &str) -> Result<Vec<FileVersion>, String> {
    let path = Path::new(source.strip_prefix("file://").unwrap_or(source));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let mut files = Vec::new();
    if name.contains(['*', '?']) {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        for entry in read_dir(dir, source)? {
            if entry
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| matches(name.as_bytes(), n.as_bytes()))
            {
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
    files.iter().map(|f| local_version(f)).collect()
}

/// The data files directly inside `dir`: regular files not hidden by a
/// leading `.` or `_` (such as `_SUCCESS` markers).
fn read_dir(dir: &Path, source: &str) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| format!("source {source:?}: cannot list {}: {e}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("source {source:?}: {e}"))?;
        if !hidden(&entry.file_name().to_string_lossy())
            && entry
                .file_type()
                .is_ok_and(|t| t.is_file() || t.is_symlink())
        {
            files.push(entry.path());
        }
    }
    Ok(files)
}

fn hidden(name: &str) -> bool {
    name.starts_with(['.', '_'])
}

/// An object named by an `s3://bucket/key` URL, with a client for its
/// bucket. Credentials, region and endpoint come from the usual `AWS_*`
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`, ...), or from the
/// instance's role when none are set.
pub struct Remote {
    /// The bucket's client.
    pub store: Arc<dyn ObjectStore>,
    /// `s3://bucket`, the URL DataFusion finds the client under.
    pub bucket: Url,
    /// The key (or key pattern) inside the bucket, without a leading `/`.
    pub key: String,
}

impl Remote {
    /// `None` for a local path (plain or `file://`); an error naming the
    /// source for a URL this build cannot read.
    pub fn parse(source: &str) -> Result<Option<Remote>, String> {
        let Some((scheme, rest)) = source.split_once("://") else {
            return Ok(None);
        };
        if scheme == "file" {
            return Ok(None);
        }
        if scheme != "s3" && scheme != "s3a" {
            return Err(format!("source {source:?}: {scheme}:// is not supported; use a local path or an s3://bucket/key URL"));
        }
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!(
                "source {source:?}: names no bucket; write s3://bucket/key"
            ));
        }
        let store = client(bucket)
            .map_err(|e| format!("source {source:?}: cannot set up the S3 client: {e}"))?;
        let bucket = Url::parse(&format!("s3://{bucket}"))
            .map_err(|e| format!("source {source:?}: bucket {bucket:?}: {e}"))?;
        Ok(Some(Remote {
            store,
            bucket,
            key: key.to_owned(),
        }))
    }

    /// The object itself when the key names one; otherwise the data
    /// objects directly under the key as a folder, or, when its last
    /// component holds `*` or `?`, those of its folder that match.
    async fn list(&self, source: &str) -> Result<Vec<FileVersion>, String> {
        let (folder, name) = self.key.rsplit_once('/').unwrap_or(("", &self.key));
        let (folder, pattern) = if name.contains(['*', '?']) {
            (folder, Some(name))
        } else {
            if !name.is_empty() {
                match self.store.head(&ObjectPath::from(self.key.as_str())).await {
                    Ok(meta) => return Ok(vec![object_version(self.url(&meta.location), &meta)]),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(format!("source {source:?}: {}", describe(e))),
                }
            }
            (self.key.trim_end_matches('/'), None)
        };
        let prefix = (!folder.is_empty()).then(|| ObjectPath::from(folder));
        let listing = self
            .store
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| format!("source {source:?}: cannot list: {}", describe(e)))?;
        let wanted = |name: &str| {
            !hidden(name) && pattern.is_none_or(|p| matches(p.as_bytes(), name.as_bytes()))
        };
        Ok(listing
            .objects
            .into_iter()
            .filter(|meta| meta.location.filename().is_some_and(wanted))
            .map(|meta| object_version(self.url(&meta.location), &meta))
            .collect())
    }

    fn url(&self, location: &ObjectPath) -> String {
        format!("{}/{location}", self.bucket.as_str().trim_end_matches('/'))
    }

    /// The object at this key, in the blocks the connection delivers.
    pub async fn blocks(&self) -> Result<BoxStream<'static, Result<Vec<u8>, String>>, String> {
        let object = self
            .store
            .get(&ObjectPath::from(self.key.as_str()))
            .await
            .map_err(describe)?;
        Ok(object
            .into_stream()
            .map(|block| block.map(Vec::from).map_err(describe))
            .boxed())
    }
}

/// The client's error, and where credentials were looked for when none
/// were given: without them the client asks the instance's metadata
/// service, whose refusal alone would puzzle anyone off AWS.
fn describe(error: object_store::Error) -> String {
    const GIVEN: [&str; 4] = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ];
    if GIVEN.iter().any(|name| std::env::var_os(name).is_some()) {
        return error.to_string();
    }
    format!("{error} (no AWS credentials are set, so the instance's role was asked; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)")
}

/// One client per bucket for the life of the process, so that tasks share
/// its connections.
fn client(bucket: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    static CLIENTS: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let mut clients = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(client) = clients.get(bucket) {
        return Ok(Arc::clone(client));
    }
    // A backfill task has its own retries, so the client's are short: a
    // missing object or a dead endpoint surfaces in seconds, not minutes.
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    let client: Arc<dyn ObjectStore> = Arc::new(
        AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(retry)
            .build()?,
    );
    clients.insert(bucket.to_owned(), Arc::clone(&client));
    Ok(client)
}

/// Shell-style match of `*` (any run) and `?` (one byte).
fn matches(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            matches(&pattern[1..], name) || (!name.is_empty() && matches(pattern, &name[1..]))
        }
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

    #[tokio::test]
    async fn sources_list_sorted_files_or_say_why_not() {
        let dir = std::env::temp_dir().join(format!("tally-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["b.csv", "a.csv", "c.parquet", ".hidden.csv", "_SUCCESS"] {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let names = |files: Vec<(String, u64)>| {
            files
                .into_iter()
                .map(|(f, _)| f.rsplit('/').next().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(
                list_files(&format!("{}/*.csv", dir.display()))
                    .await
                    .unwrap()
            ),
            ["a.csv", "b.csv"]
        );
        assert_eq!(
            names(list_files(dir.to_str().unwrap()).await.unwrap()),
            ["a.csv", "b.csv", "c.parquet"]
        );
        assert!(list_files(&format!("{}/*.ndjson", dir.display()))
            .await
            .unwrap_err()
            .contains("matches no files"));
        assert!(list_files("gs://bucket/x")
            .await
            .unwrap_err()
            .contains("gs:// is not supported"));
        assert!(list_files("s3:///x")
            .await
            .unwrap_err()
            .contains("names no bucket"));
        assert_eq!(Format::of_path("x/y.PARQUET"), Some(Format::Parquet));
        assert!(Format::parse("--format", "xml")
            .unwrap_err()
            .contains("`--format`"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
