//! Checks shared by every role's configuration. Each failure names the
//! field, the value and the rule, before anything connects.

use std::fmt;

/// A configuration value that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The field, as spelled in the TOML file (`worker.batch_max_events`).
    pub field: String,
    /// The value given.
    pub value: String,
    /// The rule.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid configuration: `{}` = {:?}: {}",
            self.field, self.value, self.reason
        )
    }
}

/// A role's settings that can check themselves: every field against its
/// rule, the first bad one named.
pub trait Validate: Sized {
    /// Checks every field; the error names the first bad one.
    fn validate(&self) -> Result<(), ConfigError>;

    /// The settings, checked once: what a service takes.
    fn checked(self) -> Result<Checked<Self>, ConfigError> {
        self.validate()?;
        Ok(Checked(self))
    }
}

/// Settings that passed [`Validate::validate`]. A service takes only these,
/// so its settings are checked once, at the edge (where a bad one exits 2),
/// and never again inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked<T>(T);

impl<T> std::ops::Deref for Checked<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Checked<T> {
    /// The checked settings themselves.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl ConfigError {
    /// A new error for `field`.
    pub fn new(
        field: impl Into<String>,
        value: impl ToString,
        reason: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            field: field.into(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// Checks `value` lies in `[min, max]`.
pub fn in_range<T: PartialOrd + fmt::Display>(
    field: &str,
    value: T,
    min: T,
    max: T,
) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(
            field,
            &value,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(())
}

/// An IANA time zone name, as [`crate::zone::Zone::parse`] reads it.
pub fn time_zone(field: &str, value: &str) -> Result<crate::zone::Zone, ConfigError> {
    crate::zone::Zone::parse(value).map_err(|reason| ConfigError::new(field, value, reason))
}

/// Checks a Kafka topic or group name: 1 to 249 of `[A-Za-z0-9._-]`.
pub fn kafka_name(field: &str, value: &str) -> Result<(), ConfigError> {
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if value.is_empty() || value.len() > 249 || !value.chars().all(legal) {
        return Err(ConfigError::new(
            field,
            value,
            "must be 1 to 249 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    Ok(())
}

/// Checks a broker list: comma-separated `host:port` entries.
pub fn brokers(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = !value.is_empty()
        && value.split(',').all(|b| {
            b.rsplit_once(':')
                .is_some_and(|(host, port)| !host.trim().is_empty() && port.parse::<u16>().is_ok())
        });
    if !ok {
        return Err(ConfigError::new(
            field,
            value,
            "must be a comma-separated list of host:port",
        ));
    }
    Ok(())
}

/// Checks a database URL names PostgreSQL or SQLite.
pub fn database_url(field: &str, value: &str) -> Result<(), ConfigError> {
    let ok = ["postgres://", "postgresql://", "sqlite://", "sqlite:"]
        .iter()
        .any(|scheme| value.starts_with(scheme) && value.len() > scheme.len());
    if !ok {
        return Err(ConfigError::new(
            field,
            shown_database_url(value),
            "must start with postgres://, postgresql:// or sqlite://",
        ));
    }
    Ok(())
}

/// A database URL as an error may show it: its scheme only. The rest (user
/// information, a `password=` parameter, a libpq `key=value` string) may hold
/// a password.
pub fn shown_database_url(value: &str) -> String {
    match value.split_once("://") {
        Some((scheme, _))
            if !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+') =>
        {
            format!("{scheme}://<rest not shown>")
        }
        _ => "<not shown: it may hold a password>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_field_and_value() {
        let error = in_range("worker.batch_max_events", 0usize, 1, 1_000_000).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid configuration: `worker.batch_max_events` = \"0\": must be between 1 and 1000000"
        );
        assert!(brokers("brokers", "127.0.0.1:9092,h:1").is_ok());
        assert!(brokers("brokers", "localhost").is_err());
        assert!(kafka_name("t", "orders.dlq").is_ok());
        assert!(kafka_name("t", "bad topic").is_err());
        assert!(database_url("d", "mysql://x").is_err());
        assert_eq!(
            database_url("d", "mysql://u:p@h/db").unwrap_err().value,
            "mysql://<rest not shown>"
        );
        assert_eq!(
            database_url("d", "host=db password=hunter2")
                .unwrap_err()
                .value,
            "<not shown: it may hold a password>"
        );
        assert_eq!(
            database_url("d", "pg://db?password=hunter2")
                .unwrap_err()
                .value,
            "pg://<rest not shown>"
        );
    }
}
