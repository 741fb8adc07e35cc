//! Merchants' time zones (`tally_merchants`), written once for both
//! databases. A merchant without a row is in the default zone.

use schemas::zone::{Zone, Zones};
use schemas::{LocalSums, LocalTotals};
use serde::Serialize;

use crate::error::{Result, StoreError};
use crate::reads::zoned_row;
use crate::sql::{params, transact, Tx};
use crate::Store;

/// A merchant's time zone as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MerchantZone {
    /// The merchant.
    pub merchant_id: String,
    /// Its IANA time zone.
    #[serde(serialize_with = "zone_name")]
    pub time_zone: Zone,
    /// When it was set, in ms since the Unix epoch.
    pub updated_at: i64,
}

fn zone_name<S: serde::Serializer>(zone: &Zone, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(zone.name())
}

async fn set_zones(tx: &mut dyn Tx, zones: &[(String, Zone)], now: i64) -> Result<u64> {
    let mut changed = 0;
    for (merchant, zone) in zones {
        changed += tx
            .execute(
                "merchant zone write",
                "INSERT INTO tally_merchants (merchant_id, time_zone, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (merchant_id) DO UPDATE SET time_zone = $2, updated_at = $3
                 WHERE tally_merchants.time_zone <> $2",
                params![merchant, zone.name(), now],
            )
            .await?;
    }
    Ok(changed)
}

async fn zones(tx: &mut dyn Tx) -> Result<Vec<MerchantZone>> {
    tx.query(
        "merchant zone read",
        "SELECT merchant_id, time_zone, updated_at FROM tally_merchants ORDER BY merchant_id",
        params![],
    )
    .await?
    .iter()
    .map(|r| {
        let name = r.text(1)?;
        Ok(MerchantZone {
            merchant_id: r.text(0)?.to_owned(),
            time_zone: Zone::parse(name).map_err(|reason| StoreError::Corrupt {
                column: "time_zone",
                value: name.to_owned(),
                reason,
            })?,
            updated_at: r.int(2)?,
        })
    })
    .collect()
}

async fn local_totals(tx: &mut dyn Tx, merchant: Option<&str>) -> Result<LocalTotals> {
    let sql = format!(
        "SELECT merchant_id, CAST(currency AS TEXT), {}, time_zone,
                CAST(sales_amount AS TEXT), sales_count, CAST(refund_amount AS TEXT), refund_count
         FROM merchant_sales_local
         WHERE CAST($1 AS TEXT) IS NULL OR merchant_id = CAST($1 AS TEXT)",
        tx.day_text("local_day")
    );
    let rows = tx
        .query("local totals read", &sql, params![merchant])
        .await?;
    let mut totals = LocalTotals::new();
    for r in &rows {
        let (key, time_zone, sums) = zoned_row(r)?;
        let time_zone = time_zone.into();
        totals.insert(key, LocalSums { time_zone, sums });
    }
    Ok(totals)
}

impl Store {
    /// Sets each merchant's time zone, in one transaction; returns how many
    /// changed (a zone set again to what it was changes nothing).
    pub async fn set_zones(&self, zones: &[(String, Zone)], now: i64) -> Result<u64> {
        let zones = zones.to_vec();
        transact!(self, "set_zones", Write, |tx| set_zones(tx, &zones, now))
    }

    /// Every merchant with a time zone, by id.
    pub async fn zones(&self) -> Result<Vec<MerchantZone>> {
        transact!(self, "zones", Read, |tx| zones(tx))
    }

    /// Every merchant's zone, and for merchants without one the database's
    /// default zone ([`Store::set_default_zone`]), or else `configured`:
    /// what local days are taken in.
    pub async fn zone_map(&self, configured: Zone) -> Result<Zones> {
        let by_merchant = self
            .zones()
            .await?
            .into_iter()
            .map(|m| (m.merchant_id, m.time_zone))
            .collect();
        let default = self.default_zone().await?.unwrap_or(configured);
        Ok(Zones::new(by_merchant, default))
    }

    /// Sets the zone of merchants without one, for every worker and
    /// aggregator at once: it overrides their `default_time_zone` settings,
    /// so two roles can never bucket the same merchant's days differently.
    pub async fn set_default_zone(&self, zone: Zone, now: i64) -> Result<()> {
        transact!(self, "set_default_zone", Write, |tx| async {
            tx.execute(
                "default zone write",
                "INSERT INTO tally_settings (key, value, updated_at) VALUES ('default_time_zone', $1, $2)
                 ON CONFLICT (key) DO UPDATE SET value = $1, updated_at = $2",
                params![zone.name(), now],
            )
            .await
            .map(drop)
        })
    }

    /// The zone of merchants without one, if the database holds it.
    pub async fn default_zone(&self) -> Result<Option<Zone>> {
        transact!(self, "default_zone", Read, |tx| async {
            let rows = tx
                .query(
                    "default zone read",
                    "SELECT value FROM tally_settings WHERE key = 'default_time_zone'",
                    params![],
                )
                .await?;
            rows.first()
                .map(|r| {
                    let name = r.text(0)?;
                    Zone::parse(name).map_err(|reason| StoreError::Corrupt {
                        column: "tally_settings.value",
                        value: name.to_owned(),
                        reason,
                    })
                })
                .transpose()
        })
    }

    /// The rows of `merchant_sales_local` (of one merchant, if given), keyed
    /// by merchant, currency and local day.
    pub async fn local_totals(&self, merchant: Option<&str>) -> Result<LocalTotals> {
        let merchant = merchant.map(str::to_owned);
        transact!(self, "local_totals", Read, |tx| local_totals(
            tx,
            merchant.as_deref()
        ))
    }
}
