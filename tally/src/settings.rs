//! Configuration layering: defaults → TOML file → `TALLY_*` environment →
//! flags. Every layer is checked before anything connects, and each error
//! names the field (and the variable or flag it came from).

use std::path::Path;

use aggregator::AggregatorConfig;
use ingest::service::IngestConfig;
use serde::{Deserialize, Serialize};
use shard_worker::WorkerConfig;
use toml::{Table, Value};

/// The whole configuration file: one table per role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[worker]`: see `shard_worker::WorkerConfig`.
    pub worker: WorkerConfig,
    /// `[aggregator]`: see `aggregator::AggregatorConfig`.
    pub aggregator: AggregatorConfig,
    /// `[ingest]`: see `ingest::service::IngestConfig`.
    pub ingest: IngestConfig,
}

/// A configuration problem, named by field and source.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The file, a variable or a flag does not fit the schema.
    #[error("invalid configuration from {origin}: {message}")]
    Parse {
        /// File path, variable or flag.
        origin: String,
        /// What is wrong (names the field).
        message: String,
    },
    /// A value breaks a rule.
    #[error(transparent)]
    Invalid(#[from] schemas::config::ConfigError),
}

/// Environment variables that set a field of several roles.
const SHARED_ENV: [(&str, &str, &[&str]); 2] = [
    ("TALLY_BROKERS", "brokers", &["worker", "aggregator", "ingest"]),
    ("TALLY_DATABASE_URL", "database_url", &["worker", "aggregator", "ingest"]),
];

impl Settings {
    /// Layers the file (if any), the environment and `overrides`
    /// (`section.field=value`, from flags) over the defaults.
    ///
    /// Fails on an unreadable file, an unknown field, or a value of the
    /// wrong type; nothing is validated against rules yet.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        let mut table = match Table::try_from(Settings::default()) {
            Ok(table) => table,
            Err(e) => unreachable!("defaults serialise: {e}"),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|source| SettingsError::Read { path: path.display().to_string(), source })?;
            let from_file: Settings = toml::from_str(&text)
                .map_err(|e| SettingsError::Parse { origin: path.display().to_string(), message: e.message().to_owned() })?;
            table = Table::try_from(from_file).expect("settings serialise");
        }
        for (name, value) in env {
            for (section, field) in env_targets(&name) {
                set(&mut table, &section, &field, &value, &name)?;
            }
        }
        for (key, value) in overrides {
            let (section, field) = key.split_once('.').ok_or_else(|| SettingsError::Parse {
                origin: format!("--set {key}"),
                message: "keys look like worker.batch_max_events or aggregator.flush_interval_ms".into(),
            })?;
            set(&mut table, section, field, value, &format!("--set {key}"))?;
        }
        Settings::deserialize(Value::Table(table))
            .map_err(|e| SettingsError::Parse { origin: "the merged configuration".into(), message: e.message().to_owned() })
    }
}

/// Maps `TALLY_WORKER_BATCH_MAX_EVENTS` to `(worker, batch_max_events)`, and
/// the shared variables to both roles.
fn env_targets(name: &str) -> Vec<(String, String)> {
    if let Some((_, field, sections)) = SHARED_ENV.iter().find(|(var, _, _)| *var == name) {
        return sections.iter().map(|section| ((*section).into(), (*field).into())).collect();
    }
    for section in ["worker", "aggregator", "ingest"] {
        let prefix = format!("TALLY_{}_", section.to_uppercase());
        if let Some(field) = name.strip_prefix(&prefix) {
            return vec![(section.into(), field.to_lowercase())];
        }
    }
    Vec::new()
}

fn set(table: &mut Table, section: &str, field: &str, raw: &str, origin: &str) -> Result<(), SettingsError> {
    let parse = |message: String| SettingsError::Parse { origin: origin.to_owned(), message };
    let section_table = table
        .get_mut(section)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| parse(format!("unknown section `{section}` (expected worker, aggregator or ingest)")))?;
    let value = match section_table.get(field) {
        Some(Value::Integer(_)) => Value::Integer(
            raw.trim().parse().map_err(|_| parse(format!("`{section}.{field}` = {raw:?}: must be an integer")))?,
        ),
        Some(Value::Boolean(_)) => Value::Boolean(
            raw.trim().parse().map_err(|_| parse(format!("`{section}.{field}` = {raw:?}: must be true or false")))?,
        ),
        Some(Value::Table(_)) => {
            let (key, value) = raw
                .split_once('=')
                .ok_or_else(|| parse(format!("`{section}.{field}` = {raw:?}: must be key=value")))?;
            let mut inner = section_table[field].as_table().cloned().unwrap_or_default();
            inner.insert(key.to_owned(), Value::String(value.to_owned()));
            Value::Table(inner)
        }
        Some(_) => Value::String(raw.to_owned()),
        None => return Err(parse(format!("unknown field `{section}.{field}`"))),
    };
    section_table.insert(field.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("tally-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[worker]\nbatch_max_events = 10\nbatch_max_ms = 7\n").unwrap();
        let settings = Settings::load(
            Some(&file),
            env(&[("TALLY_WORKER_BATCH_MAX_EVENTS", "20"), ("TALLY_BROKERS", "b:1"), ("HOME", "/x")]),
            &[("worker.batch_max_ms".into(), "9".into())],
        )
        .unwrap();
        assert_eq!(settings.worker.batch_max_events, 20);
        assert_eq!(settings.worker.batch_max_ms, 9);
        assert_eq!(settings.aggregator.brokers, "b:1");
    }

    #[test]
    fn errors_name_the_field_and_origin() {
        let error = Settings::load(None, env(&[("TALLY_WORKER_BATCH_MAX_EVENTS", "lots")]), &[]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("TALLY_WORKER_BATCH_MAX_EVENTS") && text.contains("worker.batch_max_events"), "{text}");
        let error = Settings::load(None, env(&[("TALLY_WORKER_BATCH_SIZE", "1")]), &[]).unwrap_err();
        assert!(error.to_string().contains("worker.batch_size"), "{error}");
    }
}
