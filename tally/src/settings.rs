//! Configuration layering: defaults → TOML file → `TALLY_*` environment →
//! flags. Every layer is checked before anything connects, and each error
//! names the field (and the variable or flag it came from).
//!
//! The environment spells fields as `TALLY_<ROLE>_<FIELD>`, and librdkafka
//! properties as `TALLY_<ROLE>_KAFKA__<PROPERTY>` with dots as underscores
//! (`TALLY_WORKER_KAFKA__SASL_PASSWORD` sets `sasl.password`); `TALLY_KAFKA__…`
//! sets the property for every role. Any variable may instead name a file
//! that holds its value, with `_FILE` appended (`TALLY_DATABASE_URL_FILE`),
//! as containers pass secrets. Errors never repeat a value read from the
//! environment or a file: it may be a secret.

use std::collections::BTreeMap;
use std::path::Path;

use aggregator::AggregatorConfig;
use ingest::IngestConfig;
use serde::{Deserialize, Serialize};
use shard_worker::WorkerConfig;
use toml::{Table, Value};

/// The whole configuration file: one table per role.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[worker]`: see `shard_worker::WorkerConfig`.
    pub worker: WorkerConfig,
    /// `[aggregator]`: see `aggregator::AggregatorConfig`.
    pub aggregator: AggregatorConfig,
    /// `[ingest]`: see `ingest::IngestConfig`.
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
pub(crate) const SHARED_ENV: [(&str, &str, &[&str]); 2] = [
    (
        "TALLY_BROKERS",
        "brokers",
        &["worker", "aggregator", "ingest"],
    ),
    (
        "TALLY_DATABASE_URL",
        "database_url",
        &["worker", "aggregator", "ingest"],
    ),
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
            let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
                path: path.display().to_string(),
                source,
            })?;
            let from_file: Settings = toml::from_str(&text).map_err(|e| SettingsError::Parse {
                origin: path.display().to_string(),
                message: e.message().to_owned(),
            })?;
            table = Table::try_from(from_file).expect("settings serialise");
        }
        let mut env = resolve_files(env)?;
        // Variables for every role first, so a role's own spelling wins.
        env.sort_by_key(|(name, _)| {
            !(name.starts_with("TALLY_KAFKA__") || SHARED_ENV.iter().any(|(var, _, _)| var == name))
        });
        for (name, value) in env {
            for target in env_targets(&name) {
                match target {
                    Target::Field(section, field) => {
                        set(&mut table, &section, &field, &value, &name)?
                    }
                    Target::Kafka(section, property) => {
                        set_kafka(&mut table, &section, &property, &value)
                    }
                }
            }
        }
        for (key, value) in overrides {
            let (section, field) = key.split_once('.').ok_or_else(|| SettingsError::Parse {
                origin: format!("--set {key}"),
                message: "keys look like worker.batch_max_events or aggregator.flush_interval_ms"
                    .into(),
            })?;
            set(&mut table, section, field, value, &format!("--set {key}"))?;
        }
        Settings::deserialize(Value::Table(table)).map_err(|e| SettingsError::Parse {
            origin: "the merged configuration".into(),
            message: e.message().to_owned(),
        })
    }
}

const ROLES: [&str; 3] = ["worker", "aggregator", "ingest"];

/// What one environment variable sets.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// A field of a role's table.
    Field(String, String),
    /// A librdkafka property of a role.
    Kafka(String, String),
}

/// Maps `TALLY_WORKER_BATCH_MAX_EVENTS` to `worker.batch_max_events`,
/// `TALLY_INGEST_KAFKA__SASL_PASSWORD` to ingest's `sasl.password`, and the
/// shared variables to every role.
fn env_targets(name: &str) -> Vec<Target> {
    if let Some((_, field, sections)) = SHARED_ENV.iter().find(|(var, _, _)| *var == name) {
        return sections
            .iter()
            .map(|section| Target::Field((*section).into(), (*field).into()))
            .collect();
    }
    if let Some(property) = name.strip_prefix("TALLY_KAFKA__") {
        return ROLES
            .iter()
            .map(|section| Target::Kafka((*section).into(), kafka_property(property)))
            .collect();
    }
    for section in ROLES {
        let prefix = format!("TALLY_{}_", section.to_uppercase());
        if let Some(field) = name.strip_prefix(&prefix) {
            if let Some(property) = field.strip_prefix("KAFKA__") {
                return vec![Target::Kafka(section.into(), kafka_property(property))];
            }
            return vec![Target::Field(section.into(), field.to_lowercase())];
        }
    }
    Vec::new()
}

/// `SASL_PASSWORD` → `sasl.password`: librdkafka's property names are
/// lower case with dots, and none holds an underscore.
fn kafka_property(spelled: &str) -> String {
    spelled.to_lowercase().replace('_', ".")
}

/// Replaces every `TALLY_…_FILE` variable by the variable it names, with the
/// file's contents (less a trailing newline) as its value.
///
/// Fails when the file cannot be read, or when both spellings are set.
fn resolve_files(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<(String, String)>, SettingsError> {
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(name, _)| name.starts_with("TALLY_"))
        .collect();
    let mut resolved = Vec::with_capacity(env.len());
    for (name, value) in &env {
        let Some(base) = name.strip_suffix("_FILE") else {
            resolved.push((name.clone(), value.clone()));
            continue;
        };
        if env.iter().any(|(other, _)| other == base) {
            return Err(SettingsError::Parse {
                origin: name.clone(),
                message: format!("{base} is set too: set one of {base} and {name}"),
            });
        }
        resolved.push((base.to_owned(), read_secret(name, value)?));
    }
    Ok(resolved)
}

/// The value a `…_FILE` variable `name` points to: the file at `path`, less
/// a trailing newline.
fn read_secret(name: &str, path: &str) -> Result<String, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: format!("{path} (from {name})"),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_owned())
}

/// A variable read outside the role settings (`TALLY_TOKEN`, say) from the
/// file its `_FILE` spelling names, as for the roles' variables; `None`
/// when that is not set.
pub fn from_file(variable: &str) -> Result<Option<String>, SettingsError> {
    let name = format!("{variable}_FILE");
    std::env::var(&name)
        .ok()
        .map(|path| read_secret(&name, &path))
        .transpose()
}

/// The database every role uses when none is configured.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://tally.sqlite";

/// The file of a `sqlite://PATH` (or `sqlite:PATH`) URL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
}

/// A URL's scheme, its user information (if any) and the rest. The user
/// information ends at the first `@`, as tokio-postgres reads it: a
/// password may hold `/`, `?` or `#`.
fn split_userinfo(url: &str) -> Option<(&str, Option<&str>, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    Some(match rest.split_once('@') {
        Some((userinfo, after)) => (scheme, Some(userinfo), after),
        None => (scheme, None, rest),
    })
}

/// What a log line may say of a database URL: its kind, host and port, and
/// database name (PostgreSQL), or its file (SQLite); never the user, the
/// password or the parameters.
pub fn describe_database(url: &str) -> String {
    if url.is_empty() {
        return "none".to_owned();
    }
    if let Some(path) = sqlite_path(url) {
        return format!("sqlite file {path}");
    }
    let Some((scheme, _, rest)) = split_userinfo(url) else {
        return schemas::config::shown_database_url(url);
    };
    match url::Url::parse(&format!("{scheme}://{rest}")) {
        Ok(parsed) if parsed.scheme().starts_with("postgres") => {
            let host = parsed.host_str().unwrap_or("(local socket)");
            let port = parsed.port().unwrap_or(5432);
            let name = parsed.path().trim_start_matches('/');
            format!("postgres {host}:{port}/{name}")
        }
        _ => schemas::config::shown_database_url(url),
    }
}

/// What replaces a secret in `tally config show`.
pub const REDACTED: &str = "<redacted>";

/// librdkafka properties whose values are secrets (or name who holds one),
/// by a part of their name: those librdkafka itself hides, and the
/// spellings other clients use (`sasl.jaas.config`).
const SECRET_PROPERTIES: [&str; 10] = [
    "password",
    "passphrase",
    "secret",
    "key.pem",
    "token",
    "credential",
    "jaas",
    "oauthbearer.config",
    "sasl.username",
    "private",
];

impl Settings {
    /// These settings with every secret replaced by [`REDACTED`]: bearer
    /// tokens, the user information and `password` parameter of database
    /// URLs, Kafka properties that hold passwords, secrets or private keys,
    /// and every value that came from a `…_FILE` variable in `env`.
    pub fn redacted(&self, env: impl IntoIterator<Item = (String, String)>) -> Settings {
        let mut out = self.clone();
        let hide = |value: &mut String| {
            if !value.is_empty() {
                *value = REDACTED.to_owned();
            }
        };
        hide(&mut out.ingest.tokens);
        hide(&mut out.ingest.read_tokens);
        for url in [
            &mut out.worker.database_url,
            &mut out.aggregator.database_url,
            &mut out.ingest.database_url,
        ] {
            *url = redact_url(url);
        }
        for kafka in [
            &mut out.worker.kafka,
            &mut out.aggregator.kafka,
            &mut out.ingest.kafka,
        ] {
            for (key, value) in kafka.iter_mut() {
                let key = key.to_lowercase();
                if SECRET_PROPERTIES.iter().any(|part| key.contains(part)) {
                    hide(value);
                }
            }
        }
        let mut table = Table::try_from(&out).expect("settings serialise");
        for (name, _) in env {
            let Some(base) = name.strip_suffix("_FILE") else {
                continue;
            };
            for target in env_targets(base) {
                let (section, field, property) = match &target {
                    Target::Field(section, field) => (section, field.as_str(), None),
                    Target::Kafka(section, property) => (section, "kafka", Some(property)),
                };
                let Some(section) = table.get_mut(section).and_then(Value::as_table_mut) else {
                    continue;
                };
                let slot = match property {
                    Some(property) => section
                        .get_mut(field)
                        .and_then(Value::as_table_mut)
                        .and_then(|kafka| kafka.get_mut(property.as_str())),
                    None => section.get_mut(field),
                };
                if let Some(slot @ Value::String(_)) = slot {
                    *slot = Value::String(REDACTED.to_owned());
                }
            }
        }
        Settings::deserialize(Value::Table(table)).expect("redacted settings deserialise")
    }
}

/// `url` with its user information and any `password` parameter replaced
/// by [`REDACTED`]; a URL without a scheme is replaced whole unless empty
/// or a SQLite path.
fn redact_url(url: &str) -> String {
    if url.is_empty() || url.starts_with("sqlite:") {
        return url.to_owned();
    }
    let Some((scheme, userinfo, rest)) = split_userinfo(url) else {
        return REDACTED.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (host, tail) = rest.split_at(end);
    // The user name goes too: with the host it narrows a guess.
    let authority = match userinfo {
        Some(_) => format!("{REDACTED}@{host}"),
        None => host.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    // Names are matched as the server reads them: decoded.
                    Some((key, _)) if decoded(key).contains("password") => {
                        format!("{key}={REDACTED}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A URL query's parameter name, percent-decoded and lower-cased.
fn decoded(key: &str) -> String {
    url::form_urlencoded::parse(format!("{key}=").as_bytes())
        .next()
        .map_or_else(|| key.to_owned(), |(key, _)| key.into_owned())
        .to_lowercase()
}

/// Fails when librdkafka refuses one of `role`'s `kafka` properties, naming
/// it but not its value, which may be a secret.
pub fn check_kafka(role: &str, properties: &BTreeMap<String, String>) -> Result<(), SettingsError> {
    match kafka::probe::property_refused(properties) {
        Some((key, reason)) => Err(SettingsError::Invalid(schemas::config::ConfigError::new(
            format!("{role}.kafka.{key}"),
            "<not shown>",
            reason,
        ))),
        None => Ok(()),
    }
}

fn set_kafka(table: &mut Table, section: &str, property: &str, value: &str) {
    let Some(kafka) = table
        .get_mut(section)
        .and_then(Value::as_table_mut)
        .and_then(|s| s.get_mut("kafka"))
    else {
        unreachable!("every role has a kafka table");
    };
    if let Some(kafka) = kafka.as_table_mut() {
        kafka.insert(property.to_owned(), Value::String(value.to_owned()));
    }
}

fn origin_prefix(section: &str) -> String {
    format!("TALLY_{}", section.to_uppercase())
}

fn set(
    table: &mut Table,
    section: &str,
    field: &str,
    raw: &str,
    origin: &str,
) -> Result<(), SettingsError> {
    let parse = |message: String| SettingsError::Parse {
        origin: origin.to_owned(),
        message,
    };
    let section_table = table
        .get_mut(section)
        .and_then(Value::as_table_mut)
        .ok_or_else(|| {
            parse(format!(
                "unknown section `{section}` (expected worker, aggregator or ingest)"
            ))
        })?;
    let value =
        match section_table.get(field) {
            Some(Value::Integer(_)) => Value::Integer(raw.trim().parse().map_err(|_| {
                parse(format!("`{section}.{field}` = {raw:?}: must be an integer"))
            })?),
            Some(Value::Boolean(_)) => Value::Boolean(raw.trim().parse().map_err(|_| {
                parse(format!(
                    "`{section}.{field}` = {raw:?}: must be true or false"
                ))
            })?),
            Some(Value::Table(_)) => {
                let (key, value) = raw.split_once('=').ok_or_else(|| {
                    parse(format!(
                        "`{section}.{field}` must be key=value (or use {}_KAFKA__<PROPERTY>)",
                        origin_prefix(section)
                    ))
                })?;
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
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_database_is_described_without_its_user_or_password() {
        for (url, shown) in [
            ("postgres://tally:1234/x@db:5432/t", "postgres db:5432/t"),
            (
                "postgres://tally:p?w#d@db/t?sslmode=require",
                "postgres db:5432/t",
            ),
            (
                "postgresql://db.internal:6432/totals",
                "postgres db.internal:6432/totals",
            ),
            ("sqlite://tally.sqlite", "sqlite file tally.sqlite"),
        ] {
            assert_eq!(describe_database(url), shown, "{url}");
        }
        assert_eq!(
            redact_url("postgres://tally:1234/x@db:5432/t?pass%77ord=y&application_name=a"),
            "postgres://<redacted>@db:5432/t?pass%77ord=<redacted>&application_name=a"
        );
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = std::env::temp_dir().join(format!("tally-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("tally.toml");
        std::fs::write(&file, "[worker]\nbatch_max_events = 10\nbatch_max_ms = 7\n").unwrap();
        let settings = Settings::load(
            Some(&file),
            env(&[
                ("TALLY_WORKER_BATCH_MAX_EVENTS", "20"),
                ("TALLY_BROKERS", "b:1"),
                ("HOME", "/x"),
            ]),
            &[("worker.batch_max_ms".into(), "9".into())],
        )
        .unwrap();
        assert_eq!(settings.worker.batch_max_events, 20);
        assert_eq!(settings.worker.batch_max_ms, 9);
        assert_eq!(settings.aggregator.brokers, "b:1");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_field_and_origin() {
        let error = Settings::load(None, env(&[("TALLY_WORKER_BATCH_MAX_EVENTS", "lots")]), &[])
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("TALLY_WORKER_BATCH_MAX_EVENTS")
                && text.contains("worker.batch_max_events"),
            "{text}"
        );
        let error =
            Settings::load(None, env(&[("TALLY_WORKER_BATCH_SIZE", "1")]), &[]).unwrap_err();
        assert!(error.to_string().contains("worker.batch_size"), "{error}");
    }

    #[test]
    fn any_kafka_property_comes_from_the_environment() {
        let settings = Settings::load(
            None,
            env(&[
                ("TALLY_WORKER_KAFKA__SASL_PASSWORD", "hunter2"),
                ("TALLY_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
                ("TALLY_INGEST_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(settings.worker.kafka["sasl.password"], "hunter2");
        assert!(!settings.aggregator.kafka.contains_key("sasl.password"));
        for kafka in [
            &settings.worker.kafka,
            &settings.aggregator.kafka,
            &settings.ingest.kafka,
        ] {
            assert_eq!(kafka["security.protocol"], "SASL_SSL");
        }
        assert_eq!(settings.ingest.kafka["ssl.ca.location"], "/etc/ca.pem");

        // A role's own variable wins over the one for every role, in either order.
        for pairs in [
            [
                ("TALLY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
                ("TALLY_INGEST_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"),
            ],
            [
                ("TALLY_INGEST_KAFKA__SASL_MECHANISM", "SCRAM-SHA-256"),
                ("TALLY_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512"),
            ],
        ] {
            let settings = Settings::load(None, env(&pairs), &[]).unwrap();
            assert_eq!(settings.ingest.kafka["sasl.mechanism"], "SCRAM-SHA-256");
            assert_eq!(settings.worker.kafka["sasl.mechanism"], "SCRAM-SHA-512");
        }
        let settings = Settings::load(
            None,
            env(&[
                ("TALLY_WORKER_DATABASE_URL", "sqlite://w"),
                ("TALLY_DATABASE_URL", "sqlite://all"),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(
            (
                settings.worker.database_url.as_str(),
                settings.aggregator.database_url.as_str()
            ),
            ("sqlite://w", "sqlite://all")
        );
    }

    #[test]
    fn secrets_come_from_files_and_errors_do_not_repeat_them() {
        let dir = std::env::temp_dir().join(format!("tally-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let password = dir.join("sasl-password");
        std::fs::write(&password, "s3cret-from-file\n").unwrap();
        let url = dir.join("database-url");
        std::fs::write(&url, "postgres://tally:pw-from-file@db:5432/tally\n").unwrap();
        let settings = Settings::load(
            None,
            env(&[
                (
                    "TALLY_KAFKA__SASL_PASSWORD_FILE",
                    password.to_str().unwrap(),
                ),
                ("TALLY_DATABASE_URL_FILE", url.to_str().unwrap()),
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(settings.ingest.kafka["sasl.password"], "s3cret-from-file");
        assert_eq!(
            settings.aggregator.database_url,
            "postgres://tally:pw-from-file@db:5432/tally"
        );

        let both = Settings::load(
            None,
            env(&[
                ("TALLY_DATABASE_URL", "postgres://u:inline-secret@db/x"),
                ("TALLY_DATABASE_URL_FILE", url.to_str().unwrap()),
            ]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            both.contains("TALLY_DATABASE_URL_FILE") && !both.contains("inline-secret"),
            "{both}"
        );

        let missing = Settings::load(
            None,
            env(&[("TALLY_WORKER_KAFKA__SASL_PASSWORD_FILE", "/nonexistent/pw")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            missing.contains("/nonexistent/pw")
                && missing.contains("TALLY_WORKER_KAFKA__SASL_PASSWORD_FILE"),
            "{missing}"
        );

        let malformed = Settings::load(
            None,
            env(&[("TALLY_WORKER_KAFKA", "no-equals-secret")]),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            malformed.contains("worker.kafka") && !malformed.contains("no-equals-secret"),
            "{malformed}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
