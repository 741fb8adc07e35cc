//! `tally merchants`: merchants' IANA time zones, one at a time or from a
//! CSV file, checked before anything is written.

use std::path::Path;

use backfill::now_ms;
use schemas::event::check_merchant_id;
use schemas::zone::Zone;

use super::open_store;
use crate::cli::{MerchantsArgs, MerchantsCommand};
use crate::error::{CliError, CliResult};

/// The header a zones file starts with.
const HEADER: &str = "merchant_id,time_zone";

/// Runs `tally merchants …`.
pub async fn run(args: MerchantsArgs) -> CliResult {
    let zones = match &args.command {
        MerchantsCommand::SetZone { merchant, zone } => {
            vec![checked(merchant, zone).map_err(CliError::config)?]
        }
        MerchantsCommand::Import { file } => read_file(file)?,
        MerchantsCommand::List { json } => return list(&args, *json).await,
        MerchantsCommand::SetDefaultZone { zone } => {
            let zone = Zone::parse(zone)
                .map_err(|reason| CliError::config(format!("time_zone: {reason}")))?;
            let store = open_store(&args.database).await?;
            store
                .set_default_zone(zone, now_ms())
                .await
                .map_err(CliError::run)?;
            println!(
                "Merchants without a zone are in {zone}, for every worker and aggregator from their next \
                 zone refresh (tz database {}).",
                schemas::zone::TZDB_VERSION
            );
            return Ok(());
        }
    };
    let store = open_store(&args.database).await?;
    let changed = store
        .set_zones(&zones, now_ms())
        .await
        .map_err(CliError::run)?;
    println!(
        "{} merchant zone(s) given, {changed} changed (tz database {}).",
        zones.len(),
        schemas::zone::TZDB_VERSION
    );
    Ok(())
}

/// A merchant id and zone, each checked; the error names the field, value and reason.
fn checked(merchant: &str, zone: &str) -> Result<(String, Zone), String> {
    check_merchant_id(merchant).map_err(|e| e.to_string())?;
    let zone = Zone::parse(zone).map_err(|reason| format!("time_zone: {reason}"))?;
    Ok((merchant.to_owned(), zone))
}

/// Reads a zones file: every line checked, and every bad line reported
/// (by number) before anything is written.
fn read_file(path: &Path) -> Result<Vec<(String, Zone)>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::config(format!("cannot read {}: {e}", path.display())))?;
    let (zones, errors) = parse_csv(&text);
    if !errors.is_empty() {
        let shown: Vec<String> = errors.iter().take(20).cloned().collect();
        let more = errors.len().saturating_sub(shown.len());
        return Err(CliError::config(format!(
            "{}: {} invalid line(s), nothing written:\n  {}{}",
            path.display(),
            errors.len(),
            shown.join("\n  "),
            if more > 0 {
                format!("\n  … and {more} more")
            } else {
                String::new()
            }
        )));
    }
    Ok(zones)
}

/// The zones of a CSV text with the header `merchant_id,time_zone`, and one
/// message per bad line. A merchant given twice keeps its last zone.
fn parse_csv(text: &str) -> (Vec<(String, Zone)>, Vec<String>) {
    let mut lines = text.lines().enumerate();
    let mut errors = Vec::new();
    match lines.next() {
        Some((_, header)) if header.trim().trim_start_matches('\u{feff}') == HEADER => {}
        other => {
            let found = other.map_or("", |(_, h)| h);
            return (
                Vec::new(),
                vec![format!(
                    "line 1: the header must be {HEADER:?}, found {found:?}"
                )],
            );
        }
    }
    let mut zones: Vec<(String, Zone)> = Vec::new();
    for (i, line) in lines {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let result = match fields[..] {
            _ if line.contains('"') => Err("quoted fields are not supported".to_owned()),
            [merchant, zone] => checked(merchant, zone),
            _ => Err(format!(
                "has {} fields; expected 2 ({HEADER})",
                fields.len()
            )),
        };
        match result {
            Ok(zone) => zones.push(zone),
            Err(reason) => errors.push(format!("line {number}: {reason}")),
        }
    }
    // The last zone given for a merchant wins, as if each line were set in turn.
    let mut last: std::collections::BTreeMap<String, Zone> = Default::default();
    last.extend(zones);
    (last.into_iter().collect(), errors)
}

async fn list(args: &MerchantsArgs, json: bool) -> CliResult {
    let store = open_store(&args.database).await?;
    let zones = store.zones().await.map_err(CliError::run)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&zones).expect("zones serialise")
        );
        return Ok(());
    }
    println!("{:<40} time zone", "merchant");
    for zone in &zones {
        println!("{:<40} {}", zone.merchant_id, zone.time_zone);
    }
    let default = store.default_zone().await.map_err(CliError::run)?;
    match default {
        Some(zone) => println!(
            "{} merchant(s) with a zone; every other is in {zone} (the database's default).",
            zones.len()
        ),
        None => println!(
            "{} merchant(s) with a zone; every other is in each role's default_time_zone (UTC unless set; \
             `tally merchants set-default-zone` sets one for all).",
            zones.len()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zones_file_names_each_bad_line_and_keeps_the_last_zone_given() {
        let (zones, errors) = parse_csv(
            "merchant_id,time_zone\nm-1,Europe/Berlin\n\nm-2, Asia/Tokyo\nm-1,America/St_Johns\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let names: Vec<(&str, &str)> = zones.iter().map(|(m, z)| (m.as_str(), z.name())).collect();
        assert_eq!(names, [("m-1", "America/St_Johns"), ("m-2", "Asia/Tokyo")]);
        let (_, errors) = parse_csv(
            "merchant_id,time_zone\nm-1,Europe/Berlinn\n,UTC\nm-3\n\"m,4\",UTC\nm-5,UTC\n",
        );
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].starts_with("line 2: time_zone: \"Europe/Berlinn\" is not an IANA"),
            "{}",
            errors[0]
        );
        assert!(
            errors[1].starts_with("line 3: ") && errors[1].contains("merchant_id"),
            "{}",
            errors[1]
        );
        assert!(
            errors[2].starts_with("line 4: has 1 fields"),
            "{}",
            errors[2]
        );
        assert!(errors[3].starts_with("line 5: quoted"), "{}", errors[3]);
        let (_, errors) = parse_csv("merchant,zone\nm-1,UTC\n");
        assert!(errors[0].contains("header"), "{errors:?}");
    }
}
