//! S3 event notifications, in the shape AWS S3 and MinIO send: the objects
//! they announce, what became of each, and the queue that turns each
//! created object into one import ([`ImportQueue`]). The route that takes
//! them is [`crate::imports`].
//!
//! This is the object-lands-in-S3-then-a-function-runs path of a
//! serverless pipeline, without the function runtime: point MinIO's webhook
//! target at ingest, or relay AWS S3's event (the `{"Records": …}` body) to
//! it with a bearer token. An SNS envelope is refused: SNS wraps the event
//! and cannot send a bearer token. Only `ObjectCreated:*` records start
//! imports; others, and S3's `s3:TestEvent`, are answered and ignored.

use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

/// One object a notification announces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// `s3://bucket/key`, the key URL-decoded.
    pub url: String,
    /// The size the notification gives.
    pub size: Option<i64>,
    /// The ETag the notification gives, without quotes.
    pub etag: Option<String>,
}

/// One record of a notification and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    /// The object, or the record's event name when it is ignored.
    pub object: String,
    /// The import job queued for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// What became of it.
    pub outcome: RecordOutcome,
    /// Why it was skipped, ignored or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What became of one record of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordOutcome {
    /// An import job was queued for the object.
    Queued,
    /// Already imported or queued: the reason says which.
    Skipped,
    /// Not an object creation.
    Ignored,
    /// The import could not be queued: the reason says why.
    Error,
}

impl Started {
    /// The record of `object` whose import could not be queued, and why.
    pub fn failed(object: &Announced, reason: String) -> Started {
        Started {
            object: object.url.clone(),
            job: None,
            outcome: RecordOutcome::Error,
            reason: Some(reason),
        }
    }
}

/// Queues imports. The binary implements it over the import planner
/// (`backfill::queue_object`), which this crate does not link: the HTTP
/// front door stays free of DataFusion and the file readers.
pub trait ImportQueue: Send + Sync {
    /// Queues one import for `object` in `store`, the aggregators' database.
    fn queue<'a>(
        &'a self,
        store: &'a store::Store,
        object: &'a Announced,
    ) -> Pin<Box<dyn Future<Output = Started> + Send + 'a>>;
}

#[derive(Deserialize)]
struct Notification {
    /// Each record an object: serde would also read a struct from an array.
    #[serde(rename = "Records")]
    records: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    #[serde(rename = "Event")]
    event: Option<String>,
}

#[derive(Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: Option<String>,
    s3: Option<S3>,
}

#[derive(Deserialize)]
struct S3 {
    bucket: Bucket,
    object: Object,
}

#[derive(Deserialize)]
struct Bucket {
    name: String,
}

#[derive(Deserialize)]
struct Object {
    key: String,
    size: Option<i64>,
    #[serde(rename = "eTag")]
    etag: Option<String>,
}

/// A notification's records: each created object, or the reason a record
/// is ignored. Fails, saying what is missing, when the body is not a notification.
pub fn parse(body: &[u8]) -> Result<Vec<Result<Announced, String>>, String> {
    let notification: Notification = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an S3 event notification: {e}"))?;
    if notification.event.as_deref() == Some("s3:TestEvent") {
        return Ok(Vec::new());
    }
    let records = notification
        .records
        .ok_or("the body has no `Records` array: it is not an S3 event notification")?
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            serde_json::from_value::<Record>(serde_json::Value::Object(record))
                .map_err(|e| format!("the body is not an S3 event notification: record {i}: {e}"))
        })
        .collect::<Result<Vec<Record>, String>>()?;
    Ok(records
        .into_iter()
        .enumerate()
        .map(|(i, record)| {
            let name = record.event_name.unwrap_or_default();
            if !name.starts_with("ObjectCreated:") && !name.starts_with("s3:ObjectCreated:") {
                return Err(format!(
                    "record {i}: event {name:?} is not an object creation"
                ));
            }
            let s3 = record
                .s3
                .ok_or_else(|| format!("record {i}: no `s3` object"))?;
            let key = decode_key(&s3.object.key).ok_or_else(|| {
                format!(
                    "record {i}: key {:?} is not valid URL encoding",
                    s3.object.key
                )
            })?;
            if s3.bucket.name.is_empty() || key.is_empty() {
                return Err(format!(
                    "record {i}: the bucket name and the key must not be empty"
                ));
            }
            Ok(Announced {
                url: format!("s3://{}/{key}", s3.bucket.name),
                size: s3.object.size,
                etag: s3
                    .object
                    .etag
                    .map(|e| e.trim_matches('"').to_owned())
                    .filter(|e| !e.is_empty()),
            })
        })
        .collect())
}

/// Keys in notifications are URL-encoded, with `+` for a space.
fn decode_key(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_name_created_objects_and_ignore_the_rest() {
        let body = br#"{"Records":[
            {"eventVersion":"2.1","eventSource":"aws:s3","eventName":"ObjectCreated:Put",
             "s3":{"s3SchemaVersion":"1.0","bucket":{"name":"lake","arn":"arn:aws:s3:::lake"},
                   "object":{"key":"in/day+1/a%2Bb.parquet","size":1024,"eTag":"\"0a1b\"","sequencer":"0055"}}},
            {"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"lake"},"object":{"key":"x"}}},
            {"eventName":"s3:ObjectCreated:CompleteMultipartUpload","s3":{"bucket":{"name":"lake"},"object":{"key":"big.csv"}}}
        ]}"#;
        let records = parse(body).unwrap();
        assert_eq!(
            records[0],
            Ok(Announced {
                url: "s3://lake/in/day 1/a+b.parquet".into(),
                size: Some(1024),
                etag: Some("0a1b".into())
            })
        );
        assert!(records[1]
            .as_ref()
            .unwrap_err()
            .contains("ObjectRemoved:Delete"));
        assert_eq!(records[2].as_ref().unwrap().url, "s3://lake/big.csv");
        assert_eq!(
            parse(br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"lake"}"#).unwrap(),
            vec![]
        );
        assert!(parse(b"[1]")
            .unwrap_err()
            .contains("not an S3 event notification"));
        assert!(parse(br#"{"Message":"x"}"#)
            .unwrap_err()
            .contains("Records"));
        // A record must be an object, not a list of its fields.
        let error = parse(br#"{"Records":[[null,null]]}"#).unwrap_err();
        assert!(
            error.contains("not an S3 event notification") && error.contains("expected a map"),
            "{error}"
        );
        assert_eq!(decode_key("a%zz"), None);
    }
}
