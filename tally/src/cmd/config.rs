//! `tally config check` and `tally config show`: the configuration every
//! role would start with, checked or printed, before anything runs.

use std::collections::BTreeMap;
use std::time::Duration;

use kafka::probe::Reach;
use schemas::config::Validate;
use store::Store;

use crate::cli::{ConfigArgs, ConfigCommand, Layers, Role};
use crate::error::{CliError, CliResult};
use crate::settings::{self, Settings};

use super::service::load;

/// How long `--connect` waits for each cluster's metadata.
const BROKER_WAIT: Duration = Duration::from_secs(10);

/// Runs `tally config …`.
pub(crate) async fn run(args: ConfigArgs) -> CliResult {
    match args.command {
        ConfigCommand::Check {
            layers,
            connect,
            role,
        } => check(&layers, connect, role).await,
        ConfigCommand::Show { layers, role, json } => show(&layers, role, json),
    }
}

/// Checks every role's settings (or `only` one's); with `connect`, reaches each role's
/// brokers and database. Exit 2 naming every bad field, 1 when something
/// could not be reached.
async fn check(layers: &Layers, connect: bool, only: Option<Role>) -> CliResult {
    let settings = load(layers)?;
    let roles: Vec<Role> = match only {
        Some(role) => vec![role],
        None => Role::ALL.to_vec(),
    };
    let mut bad = Vec::new();
    for &role in &roles {
        match role_checks(&settings, role) {
            Ok(()) => {
                println!("{}: ok", role.name());
                if database_url(&settings, role) == settings::DEFAULT_DATABASE_URL {
                    println!(
                        "  warning: no database configured; the default SQLite file tally.sqlite \
                         in the working directory would be used"
                    );
                }
            }
            Err(error) => {
                println!("{}: {error}", role.name());
                bad.push(role.name());
            }
        }
    }
    if !bad.is_empty() {
        return Err(CliError::config(format!(
            "the configuration is not valid for {}: see above",
            bad.join(", ")
        )));
    }
    if connect {
        reach_all(&settings, &roles).await
    } else {
        Ok(())
    }
}

/// The checks a role makes before it starts: every field, then each Kafka
/// property on its own (named without its value).
fn role_checks(settings: &Settings, role: Role) -> Result<(), String> {
    let fields = match role {
        Role::Worker => settings.worker.validate(),
        Role::Aggregator => settings.aggregator.validate(),
        Role::Ingest => settings.ingest.validate(),
    };
    fields.map_err(|error| error.to_string())?;
    let (_, properties) = kafka_of(settings, role);
    settings::check_kafka(role.name(), properties).map_err(|error| error.to_string())
}

fn database_url(settings: &Settings, role: Role) -> &str {
    match role {
        Role::Worker => &settings.worker.database_url,
        Role::Aggregator => &settings.aggregator.database_url,
        Role::Ingest => &settings.ingest.database_url,
    }
}

fn kafka_of(settings: &Settings, role: Role) -> (&str, &BTreeMap<String, String>) {
    match role {
        Role::Worker => (&settings.worker.brokers, &settings.worker.kafka),
        Role::Aggregator => (&settings.aggregator.brokers, &settings.aggregator.kafka),
        Role::Ingest => (&settings.ingest.brokers, &settings.ingest.kafka),
    }
}

/// Reaches each distinct cluster and database the roles name, once each,
/// and says what answered. Fails (exit 1) when any did not.
async fn reach_all(settings: &Settings, roles_checked: &[Role]) -> CliResult {
    let mut failed = 0;
    let mut clusters: Vec<(&str, &BTreeMap<String, String>, Vec<&str>)> = Vec::new();
    let mut databases: Vec<(&str, Vec<&str>)> = Vec::new();
    for &role in roles_checked {
        let (brokers, properties) = kafka_of(settings, role);
        match clusters
            .iter_mut()
            .find(|(b, p, _)| *b == brokers && *p == properties)
        {
            Some((_, _, roles)) => roles.push(role.name()),
            None => clusters.push((brokers, properties, vec![role.name()])),
        }
        let url = database_url(settings, role);
        if url.is_empty() {
            continue;
        }
        match databases.iter_mut().find(|(u, _)| *u == url) {
            Some((_, roles)) => roles.push(role.name()),
            None => databases.push((url, vec![role.name()])),
        }
    }
    for (brokers, properties, roles) in clusters {
        let mut config = kafka::client(brokers);
        kafka::client::apply(&mut config, properties);
        let reach = tokio::task::spawn_blocking(move || kafka::probe::reach(&config, BROKER_WAIT))
            .await
            .unwrap_or(Reach::Unreachable);
        let roles = roles.join(", ");
        match reach {
            Reach::Answered { brokers: n, topics } => {
                println!("brokers {brokers} ({roles}): answered: {n} broker(s), {topics} topic(s)")
            }
            Reach::Refused(reason) => {
                failed += 1;
                println!("brokers {brokers} ({roles}): refused the connection: {reason}");
            }
            Reach::Unusable(reason) => {
                failed += 1;
                println!("brokers {brokers} ({roles}): cannot make a Kafka client: {reason}");
            }
            Reach::Unreachable => {
                failed += 1;
                println!(
                    "brokers {brokers} ({roles}): no answer within {} s",
                    BROKER_WAIT.as_secs()
                );
            }
        }
    }
    for (url, roles) in databases {
        if !reach_database(url, &roles.join(", ")).await {
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(CliError::run(format!(
            "{failed} of the brokers and databases above could not be used"
        )));
    }
    Ok(())
}

/// Reaches one database and says what answered; `false` when it cannot be
/// used. A SQLite file is only looked at: opening it would migrate it.
async fn reach_database(url: &str, roles: &str) -> bool {
    let shown = settings::describe_database(url);
    if let Some(path) = settings::sqlite_path(url) {
        return match std::fs::File::open(path) {
            Ok(_) => {
                println!("database {shown} ({roles}): the file exists and can be read");
                true
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                println!(
                    "database {shown} ({roles}): no such file yet; the first service creates it"
                );
                true
            }
            Err(error) => {
                println!("database {shown} ({roles}): cannot read it: {error}");
                false
            }
        };
    }
    match Store::connect_existing(url).await {
        Ok(_) => {
            println!("database {shown} ({roles}): answered; its schema is current");
            true
        }
        Err(error) => {
            println!("database {shown} ({roles}): {error}");
            false
        }
    }
}

/// Prints the effective configuration, secrets redacted: TOML, or JSON.
fn show(layers: &Layers, role: Option<Role>, json: bool) -> CliResult {
    let settings = load(layers)?.redacted(std::env::vars());
    let value = match role {
        None => serde_json::to_value(&settings),
        Some(Role::Worker) => serde_json::to_value(&settings.worker),
        Some(Role::Aggregator) => serde_json::to_value(&settings.aggregator),
        Some(Role::Ingest) => serde_json::to_value(&settings.ingest),
    }
    .map_err(CliError::run)?;
    let text = if json {
        serde_json::to_string_pretty(&value).map_err(CliError::run)?
    } else {
        let table = match role {
            None => value,
            Some(role) => serde_json::json!({ role.name(): value }),
        };
        toml::to_string(&table).map_err(CliError::run)?
    };
    println!("{}", text.trim_end());
    Ok(())
}
