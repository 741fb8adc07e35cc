//! The totals API: tally's results over HTTP, for dashboards and merchants'
//! back offices, read from the aggregators' database with read tokens.
//!
//! - `GET /v1/merchants/{merchant_id}/totals?from=DAY&to=DAY[&currency=EUR][&basis=utc|local]`:
//!   one merchant's rows per day and currency, and their sum per currency.
//! - `GET /v1/merchants?day=DAY[&top=N][&currency=EUR][&basis=utc|local]`:
//!   the day's top merchants by net amount, per currency.
//! - `GET /v1/merchants/{merchant_id}/days?from=DAY&to=DAY[&basis=utc|local]`:
//!   each day's state (open or closed), its closed totals, the adjustments
//!   since it closed and its current totals ([`store::closes`]).
//!
//! Amounts are the tables' exact decimal strings. `basis=utc` (the default)
//! reads `merchant_sales`; `basis=local` reads `merchant_sales_local`, whose
//! days are each merchant's own.
//!
//! Every answer carries an `ETag`: a hash of its body, which holds every
//! row's `updated_at`, so it changes exactly when a total does. A request
//! with a matching `If-None-Match` gets 304 and no body.
//!
//! | status | when |
//! | --- | --- |
//! | 200 | the rows (possibly none) |
//! | 304 | `If-None-Match` names the answer's `ETag` |
//! | 400 | a parameter is missing, malformed, out of its bounds or unknown: `parameter` names it |
//! | 401 | no bearer token, or an unknown one |
//! | 403 | a write token (`ingest.tokens`): reading takes a read token (`ingest.read_tokens`) |
//! | 503 | the database is unreachable, `ingest.database_url` is not set, or too many requests are in progress (`Retry-After`) |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use schemas::{Amount, Day};
use serde::{Deserialize, Serialize};
use store::reads::{Basis, DayTotals};
use store::Store;

use crate::database::Database;
use crate::http::respond::Refusal;
use crate::http::{Access, Ingest};
use crate::metrics::REQUESTS;

/// The longest range one totals request may ask for, in days (both ends
/// included): a year, leap or not.
pub const MAX_RANGE_DAYS: i32 = 366;
/// The most merchants per currency one top-merchants request may ask for.
pub const MAX_TOP: i64 = 1_000;
/// Merchants per currency when `top` is not given.
pub const DEFAULT_TOP: i64 = 10;

const TOTALS_ROUTE: &str = "/v1/merchants/{merchant_id}/totals";
const DAYS_ROUTE: &str = "/v1/merchants/{merchant_id}/days";
const TOP_ROUTE: &str = "/v1/merchants";

/// One row of a totals table, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayRow {
    /// The day: UTC, or the merchant's own on the local basis.
    pub day: Day,
    /// Currency code.
    pub currency: String,
    /// The zone whose calendar `day` is (`UTC` on the UTC basis).
    pub time_zone: String,
    /// Sum of sale amounts.
    pub sales_amount: Amount,
    /// Number of sales.
    pub sales_count: i64,
    /// Sum of refund amounts.
    pub refund_amount: Amount,
    /// Number of refunds.
    pub refund_count: i64,
    /// `sales_amount - refund_amount`.
    pub net_amount: Amount,
    /// When the row last changed (RFC 3339, UTC).
    pub updated_at: String,
}

impl From<&DayTotals> for DayRow {
    fn from(row: &DayTotals) -> DayRow {
        DayRow {
            day: row.day,
            currency: row.currency.clone(),
            time_zone: row.time_zone.clone(),
            sales_amount: row.sums.sales_amount,
            sales_count: row.sums.sales_count,
            refund_amount: row.sums.refund_amount,
            refund_count: row.sums.refund_count,
            net_amount: row.sums.net_amount(),
            updated_at: row.updated_at.clone(),
        }
    }
}

/// One currency's sum over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSum {
    /// Currency code.
    pub currency: String,
    /// Days with a row in this currency.
    pub days: usize,
    /// Sum of sale amounts.
    pub sales_amount: Amount,
    /// Number of sales.
    pub sales_count: i64,
    /// Sum of refund amounts.
    pub refund_amount: Amount,
    /// Number of refunds.
    pub refund_count: i64,
    /// `sales_amount - refund_amount`.
    pub net_amount: Amount,
}

/// The answer of `GET /v1/merchants/{merchant_id}/totals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerchantTotals {
    /// The merchant.
    pub merchant_id: String,
    /// `utc` or `local`.
    pub basis: String,
    /// First day of the range.
    pub from: Day,
    /// Last day of the range (included).
    pub to: Day,
    /// The currency asked for, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// One entry per day and currency with sales or refunds, by day, then
    /// currency. Days without any are left out.
    pub days: Vec<DayRow>,
    /// The sum over the range, per currency (amounts in different
    /// currencies are never added).
    pub sums: Vec<RangeSum>,
}

/// One merchant in a top list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ranked {
    /// 1 for the highest net amount in its currency.
    pub rank: usize,
    /// The merchant.
    pub merchant_id: String,
    /// Its row of the day.
    #[serde(flatten)]
    pub totals: DayRow,
}

/// The answer of `GET /v1/merchants`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopMerchants {
    /// The day (each merchant's own on the local basis).
    pub day: Day,
    /// `utc` or `local`.
    pub basis: String,
    /// Merchants asked for per currency.
    pub top: i64,
    /// The currency asked for, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// By currency, then rank: at most `top` per currency, by net amount,
    /// highest first; ties by merchant id, bytewise.
    pub merchants: Vec<Ranked>,
}

/// A JSON answer of a totals route (503s ask to retry after 5 s).
fn json(route: &str, status: StatusCode, body: Vec<u8>) -> Response {
    crate::http::respond::json(route, status, body, "5")
}

/// A request's query parameters, each given at most once and each one of
/// those its route takes.
struct Query(BTreeMap<String, String>);

impl Query {
    fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Query, Refusal> {
        let mut found = BTreeMap::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, value) = (decode(name), decode(value));
            if !allowed.contains(&name.as_str()) {
                let shown: String = name.chars().take(64).collect();
                return Err(Refusal::parameter(
                    &shown,
                    format!(
                        "is not a parameter of this route, which takes {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if found.insert(name.clone(), value).is_some() {
                return Err(Refusal::parameter(&name, "is given more than once"));
            }
        }
        Ok(Query(found))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    fn day(&self, name: &str) -> Result<Day, Refusal> {
        let text = self
            .get(name)
            .ok_or_else(|| Refusal::parameter(name, "is required (a day, YYYY-MM-DD)"))?;
        Day::parse(text).map_err(|e| {
            Refusal::parameter(name, format!("{text:?} is not a day (YYYY-MM-DD): it {e}"))
        })
    }

    /// `from` and `to`, in order and at most [`MAX_RANGE_DAYS`] apart.
    fn range(&self) -> Result<[Day; 2], Refusal> {
        let (from, to) = (self.day("from")?, self.day("to")?);
        if to < from {
            return Err(Refusal::parameter(
                "to",
                format!("{to} is before from ({from})"),
            ));
        }
        let span = to.0 - from.0 + 1;
        if span > MAX_RANGE_DAYS {
            return Err(Refusal::parameter(
                "to",
                format!(
                    "{from} to {to} is {span} days; one request covers at most {MAX_RANGE_DAYS}"
                ),
            ));
        }
        Ok([from, to])
    }

    fn currency(&self) -> Result<Option<String>, Refusal> {
        let Some(text) = self.get("currency") else {
            return Ok(None);
        };
        schemas::event::check_currency(text)
            .map_err(|e| Refusal::parameter("currency", format!("{text:?} {}", e.reason)))?;
        Ok(Some(text.to_owned()))
    }

    fn basis(&self) -> Result<Basis, Refusal> {
        let text = self.get("basis").unwrap_or("utc");
        Basis::parse(text).ok_or_else(|| {
            Refusal::parameter("basis", format!("{text:?} is neither utc nor local"))
        })
    }
}

/// Percent-decodes a query component (`+` is a space).
fn decode(text: &str) -> String {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

fn basis_name(basis: Basis) -> String {
    match basis {
        Basis::Utc => "utc",
        Basis::Local => "local",
    }
    .to_owned()
}

/// The path's merchant id, checked as an event's is.
fn check_merchant(merchant: &str) -> Result<(), Refusal> {
    schemas::event::check_merchant_id(merchant)
        .map_err(|e| Refusal::parameter("merchant_id", format!("{:?} {}", e.value, e.reason)))
}

/// The database and a request slot, once the token may read.
fn admit<'a>(
    state: &'a Ingest,
    headers: &HeaderMap,
) -> Result<(&'a Database, crate::http::Slot), Refusal> {
    match state.access(headers) {
        Access::Read => {}
        Access::Write => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this is a write token (ingest.tokens); reading totals takes a read token (ingest.read_tokens)",
            ))
        }
        Access::Denied => {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid `Authorization: Bearer <read token>` header is required",
            ))
        }
    }
    let Some(database) = state.database() else {
        return Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the totals API is off: set ingest.database_url to the aggregators' database",
        ));
    };
    let slot = state.admit()?;
    Ok((database, slot))
}

impl Database {
    /// The connected store, or the 503 that says why there is none.
    async fn connected(&self) -> Result<&Store, Refusal> {
        self.store()
            .await
            .map_err(|message| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, message))
    }
}

/// A failed read: 503 when a retry may succeed, 500 otherwise.
fn failed(error: &store::StoreError) -> Refusal {
    let status = if error.is_retryable() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    tracing::warn!(%error, "A totals read failed.");
    Refusal::new(status, format!("the database read failed: {error}"))
}

/// The answer as JSON with its `ETag`, or 304 when `If-None-Match` has it.
fn tagged<T: Serialize>(route: &str, headers: &HeaderMap, answer: &T) -> Response {
    let body = serde_json::to_vec(answer).expect("answers serialise");
    let tag = etag(&body);
    let value = HeaderValue::from_str(&tag).expect("hex is a header value");
    let mut response = if none_match(headers, &tag) {
        REQUESTS.with_label_values(&[route, "304"]).inc();
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        json(route, StatusCode::OK, body)
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, value);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// A strong entity tag: FNV-1a (64 bits) of the body, quoted.
fn etag(body: &[u8]) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in body {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:016x}\"")
}

/// Whether `If-None-Match` names `tag` (or is `*`); weak tags compare by
/// their value, as RFC 9110 says for `If-None-Match`.
fn none_match(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|given| given == "*" || given.strip_prefix("W/").unwrap_or(given) == tag)
}

/// `GET /v1/merchants/{merchant_id}/totals`.
pub(crate) async fn merchant_totals(
    State(state): State<Arc<Ingest>>,
    Path(merchant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match merchant_totals_answer(&state, &merchant, query.as_deref(), &headers).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(TOTALS_ROUTE, "5"),
    }
}

async fn merchant_totals_answer(
    state: &Ingest,
    merchant: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let (database, _slot) = admit(state, headers)?;
    check_merchant(merchant)?;
    let query = Query::parse(query, &["from", "to", "currency", "basis"])?;
    let [from, to] = query.range()?;
    let (currency, basis) = (query.currency()?, query.basis()?);
    let rows = database
        .connected()
        .await?
        .merchant_days(merchant, [from, to], currency.as_deref(), basis)
        .await
        .map_err(|e| failed(&e))?;
    let sums = range_sums(&rows).ok_or_else(|| {
        Refusal::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the range's sum does not fit 38 digits; ask for a shorter range",
        )
    })?;
    let answer = MerchantTotals {
        merchant_id: merchant.to_owned(),
        basis: basis_name(basis),
        from,
        to,
        currency,
        days: rows.iter().map(DayRow::from).collect(),
        sums,
    };
    Ok(tagged(TOTALS_ROUTE, headers, &answer))
}

/// `GET /v1/merchants/{merchant_id}/days`.
pub(crate) async fn merchant_days(
    State(state): State<Arc<Ingest>>,
    Path(merchant): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match merchant_days_answer(&state, &merchant, query.as_deref(), &headers).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(DAYS_ROUTE, "5"),
    }
}

async fn merchant_days_answer(
    state: &Ingest,
    merchant: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let (database, _slot) = admit(state, headers)?;
    check_merchant(merchant)?;
    let query = Query::parse(query, &["from", "to", "basis"])?;
    let (range, basis) = (query.range()?, query.basis()?);
    let read = database
        .connected()
        .await?
        .merchant_days_closed(merchant, range, basis)
        .await
        .map_err(|e| failed(&e))?;
    let answer = store::closes::DaysAnswer::new(merchant, basis, range, read);
    Ok(tagged(DAYS_ROUTE, headers, &answer))
}

/// Each currency's sum over `rows`; `None` if an amount overflows.
fn range_sums(rows: &[DayTotals]) -> Option<Vec<RangeSum>> {
    let mut by_currency: BTreeMap<&str, RangeSum> = BTreeMap::new();
    for row in rows {
        let sum = by_currency
            .entry(&row.currency)
            .or_insert_with(|| RangeSum {
                currency: row.currency.clone(),
                days: 0,
                sales_amount: Amount::ZERO,
                sales_count: 0,
                refund_amount: Amount::ZERO,
                refund_count: 0,
                net_amount: Amount::ZERO,
            });
        sum.days += 1;
        sum.sales_amount = sum.sales_amount.checked_add(row.sums.sales_amount)?;
        sum.refund_amount = sum.refund_amount.checked_add(row.sums.refund_amount)?;
        sum.sales_count += row.sums.sales_count;
        sum.refund_count += row.sums.refund_count;
    }
    let mut sums: Vec<RangeSum> = by_currency.into_values().collect();
    for sum in &mut sums {
        sum.net_amount = sum.sales_amount - sum.refund_amount;
    }
    Some(sums)
}

/// `GET /v1/merchants`.
pub(crate) async fn top_merchants(
    State(state): State<Arc<Ingest>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    match top_merchants_answer(&state, query.as_deref(), &headers).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(TOP_ROUTE, "5"),
    }
}

async fn top_merchants_answer(
    state: &Ingest,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response, Refusal> {
    let (database, _slot) = admit(state, headers)?;
    let query = Query::parse(query, &["day", "top", "currency", "basis"])?;
    let day = query.day("day")?;
    let top = match query.get("top") {
        None => DEFAULT_TOP,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .ok_or_else(|| {
                Refusal::parameter(
                    "top",
                    format!("{text:?} is not a whole number from 1 to {MAX_TOP}"),
                )
            })?,
    };
    let (currency, basis) = (query.currency()?, query.basis()?);
    let rows = database
        .connected()
        .await?
        .top_merchants(day, currency.as_deref(), basis, top)
        .await
        .map_err(|e| failed(&e))?;
    let mut merchants = Vec::with_capacity(rows.len());
    for row in &rows {
        let rank = match merchants.last() {
            Some(Ranked { rank, totals, .. }) if totals.currency == row.currency => rank + 1,
            _ => 1,
        };
        merchants.push(Ranked {
            rank,
            merchant_id: row.merchant_id.clone(),
            totals: DayRow::from(row),
        });
    }
    let answer = TopMerchants {
        day,
        basis: basis_name(basis),
        top,
        currency,
        merchants,
    };
    Ok(tagged(TOP_ROUTE, headers, &answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<Query, Refusal>) -> (String, String) {
        let Err(Refusal(status, body)) = result else {
            panic!("accepted");
        };
        assert_eq!(status, StatusCode::BAD_REQUEST);
        (body.parameter.unwrap(), body.error)
    }

    #[test]
    fn query_parameters_are_decoded_known_and_given_once() {
        let allowed = &["from", "to", "currency"];
        let query = Query::parse(
            Some("from=2026-03-01&to=2026-03%2D31&currency=EUR"),
            allowed,
        )
        .ok()
        .unwrap();
        assert_eq!(
            query.day("to").ok(),
            Some(Day::parse("2026-03-31").unwrap())
        );
        let (parameter, error) = refused(Query::parse(Some("form=2026-03-01"), allowed));
        assert_eq!(parameter, "form");
        assert!(error.contains("from, to, currency"), "{error}");
        assert_eq!(refused(Query::parse(Some("to=a&to=b"), allowed)).0, "to");
        let query = Query::parse(Some("from=2026-02-30&currency=eur"), allowed)
            .ok()
            .unwrap();
        let Err(Refusal(_, error)) = query.day("from") else {
            panic!()
        };
        assert!(error.error.contains("\"2026-02-30\""), "{}", error.error);
        assert!(query.currency().is_err());
        assert!(query.day("to").is_err());
    }

    #[test]
    fn the_etag_follows_the_body_and_if_none_match_compares_weakly() {
        let tag = etag(b"{\"days\":[]}");
        assert_ne!(tag, etag(b"{\"days\":[1]}"));
        assert_eq!(tag.len(), 18);
        let mut headers = HeaderMap::new();
        assert!(!none_match(&headers, &tag));
        let listed = format!("\"other\", W/{tag}");
        headers.insert(
            header::IF_NONE_MATCH,
            HeaderValue::from_str(&listed).unwrap(),
        );
        assert!(none_match(&headers, &tag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert!(!none_match(&headers, &tag));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(none_match(&headers, &tag));
    }
}
