//! Budget and balance alerts (issue 17): a tenant admin is warned before the money runs out, not
//! after calls start failing.
//!
//! Each tenant's settings (`Store::set_alert_settings`) name thresholds: the available balance
//! below X credits, or below N days of the last 7 days' average daily spend, and percentages of
//! every department budget, user quota and key quota (e.g. 80 and 100). Every `check_seconds`
//! each node reads the levels (the live books: the ledger, or the Redis bank in cluster mode) and
//! records each subject's level in the store; a rise fires the alert, and the store's atomic
//! compare-and-set on the level (`Store::alert_level`) makes exactly one node of a fleet see it,
//! so an alert fires once per crossing, not once per call or per node. A fall (a top-up, a new
//! quota period) re-arms it silently.
//!
//! Delivery: an email to each address (the console's `[smtp]` relay) and a JSON webhook signed
//! `Tollgate-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "t.body">` with the tenant's secret (the
//! same scheme as Stripe's), retried with backoff (1, 2, 4, 8 s: five attempts); every attempt is
//! in the delivery log (`alert_deliveries`), shown in the console.

use crate::app::App;
use crate::billing::entry::Account;
use crate::metrics::METRICS;
use crate::store::sqlite::{AlertDelivery, AlertMove, AlertSettings};
use crate::tenancy::TenantId;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Delivery attempts of one webhook (waits of 1, 2, 4 and 8 s between them).
pub const WEBHOOK_ATTEMPTS: i64 = 5;
/// Days of spend the `balance_days` threshold averages over.
pub const SPEND_DAYS: i64 = 7;

/// One subject's reading: what it is and where it stands.
#[derive(Debug, Clone)]
struct Reading {
    /// `balance`, `balance_days`, `group:<id>`, `user:<id>`, `key:<id>`.
    subject: String,
    /// `balance_low`, `balance_days`, `department_budget`, `user_quota`, `key_quota`.
    kind: &'static str,
    level: i64,
    /// What crossing `level` means, for people ("80%", "100 credits", "3 days").
    threshold: String,
    name: String,
    value: i64,
    limit: i64,
}

fn credits(nano: i64) -> String {
    crate::billing::pricing::to_credits(nano)
        .normalize()
        .to_string()
}

/// How many of `percents` (sorted ascending) `spent` of `limit` has reached.
fn quota_level(percents: &[u32], spent: i64, limit: i64) -> (i64, Option<u32>) {
    if limit <= 0 {
        return (0, None);
    }
    let pct = i128::from(spent) * 100;
    let reached: Vec<u32> = percents
        .iter()
        .copied()
        .filter(|p| pct >= i128::from(*p) * i128::from(limit))
        .collect();
    (reached.len() as i64, reached.last().copied())
}

/// The tenant's available balance from the live books.
async fn available(app: &App, tenant: TenantId) -> Option<i64> {
    match app.ledger.fleet() {
        None => Some(app.ledger.balance(tenant).available),
        Some(fleet) => fleet.totals(tenant).await.ok().map(|t| t.bal + t.leases),
    }
}

async fn readings(app: &Arc<App>, s: &AlertSettings) -> Vec<Reading> {
    let tenant = s.tenant_id;
    let mut out = Vec::new();
    let balance = available(app, tenant).await;
    if let (Some(limit), Some(value)) = (s.balance_below_nano, balance) {
        out.push(Reading {
            subject: "balance".into(),
            kind: "balance_low",
            level: i64::from(value < limit),
            threshold: format!("{} credits", credits(limit)),
            name: "balance".into(),
            value,
            limit,
        });
    }
    if let (Some(days), Some(value)) = (s.balance_days, balance) {
        let store = app.store.clone();
        let daily = tokio::task::spawn_blocking(move || store.daily_spend(tenant, SPEND_DAYS))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let limit = daily.saturating_mul(days);
        out.push(Reading {
            subject: "balance_days".into(),
            kind: "balance_days",
            level: i64::from(daily > 0 && value < limit),
            threshold: format!("{days} days of spend"),
            name: "balance".into(),
            value,
            limit,
        });
    }
    if s.quota_percents.is_empty() {
        return out;
    }
    let mut percents = s.quota_percents.clone();
    percents.sort_unstable();
    percents.dedup();
    let store = app.store.clone();
    let subjects = tokio::task::spawn_blocking(move || {
        let mut v: Vec<(String, &'static str, String, Account, i64)> = Vec::new();
        for g in store.list_groups(tenant)? {
            if let Some(b) = g.budget_nano {
                v.push((
                    format!("group:{}", g.id.0),
                    "department_budget",
                    g.name,
                    Account::Group(g.id),
                    b,
                ));
            }
        }
        for u in store.list_users(tenant)? {
            if let Some(q) = u.quota_nano {
                v.push((
                    format!("user:{}", u.id.0),
                    "user_quota",
                    u.email,
                    Account::User(u.id),
                    q,
                ));
            }
        }
        for k in store.list_keys(Some(tenant))? {
            if let (Some(q), None) = (k.quota_nano, k.revoked_at) {
                v.push((
                    format!("key:{}", k.id.0),
                    "key_quota",
                    k.name,
                    Account::Key(k.id),
                    q,
                ));
            }
        }
        Ok::<_, crate::store::sqlite::StoreError>(v)
    })
    .await
    .ok()
    .and_then(Result::ok)
    .unwrap_or_default();
    for (subject, kind, name, account, limit) in subjects {
        let (spent, _) = app.ledger.account_spend(tenant, account);
        let (level, pct) = quota_level(&percents, spent, limit);
        out.push(Reading {
            subject,
            kind,
            level,
            threshold: pct.map(|p| format!("{p}%")).unwrap_or_default(),
            name,
            value: spent,
            limit,
        });
    }
    out
}

/// One pass over every tenant with alerts: answers how many alerts fired.
pub async fn check_all(app: &Arc<App>) -> usize {
    let store = app.store.clone();
    let settings = match tokio::task::spawn_blocking(move || store.enabled_alert_settings()).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "alerts: settings could not be read");
            return 0;
        }
        Err(_) => return 0,
    };
    let mut fired = 0;
    let mut active: std::collections::HashMap<&'static str, i64> = std::collections::HashMap::new();
    for s in settings {
        let (store, id) = (app.store.clone(), s.tenant_id.0.to_string());
        let tenant_name = tokio::task::spawn_blocking(move || store.find_tenant(&id))
            .await
            .ok()
            .and_then(Result::ok)
            .map_or_else(|| s.tenant_id.0.to_string(), |t| t.name);
        for r in readings(app, &s).await {
            if r.level > 0 {
                *active.entry(r.kind).or_default() += 1;
            }
            let (store, tenant, subject, level) =
                (app.store.clone(), s.tenant_id, r.subject.clone(), r.level);
            let moved =
                tokio::task::spawn_blocking(move || store.alert_level(tenant, &subject, level))
                    .await;
            if let Ok(Ok(AlertMove::Fired(_))) = moved {
                fired += 1;
                METRICS.alerts_fired.with_label_values(&[r.kind]).inc();
                send(app, &s, alert_body(&tenant_name, &s, &r)).await;
            }
        }
    }
    for kind in [
        "balance_low",
        "balance_days",
        "department_budget",
        "user_quota",
        "key_quota",
    ] {
        METRICS
            .alerts_active
            .with_label_values(&[kind])
            .set(active.get(kind).copied().unwrap_or(0));
    }
    fired
}

fn alert_body(tenant_name: &str, s: &AlertSettings, r: &Reading) -> Value {
    let (what, text) = match r.kind {
        "balance_low" | "balance_days" => (
            json!({"kind": "tenant", "id": s.tenant_id.0, "name": tenant_name}),
            format!(
                "The available balance of {tenant_name} is {} credits, below {} ({}).",
                credits(r.value),
                credits(r.limit),
                r.threshold
            ),
        ),
        kind => {
            let (k, id) = r.subject.split_once(':').unwrap_or(("", ""));
            let what = match kind {
                "department_budget" => "Department/project",
                "user_quota" => "User",
                _ => "API key",
            };
            (
                json!({"kind": k, "id": id.parse::<i64>().unwrap_or(0), "name": r.name}),
                format!(
                    "{what} `{}` of {tenant_name} has used {} of its {} ({} of {} credits).",
                    r.name,
                    r.threshold,
                    if kind == "department_budget" {
                        "budget"
                    } else {
                        "quota"
                    },
                    credits(r.value),
                    credits(r.limit)
                ),
            )
        }
    };
    json!({
        "id": format!("al_{}", crate::payments::keys::nonce(20)),
        "type": r.kind,
        "tenant": {"id": s.tenant_id.0, "name": tenant_name},
        "subject": what,
        "threshold": r.threshold,
        "value": credits(r.value),
        "limit": credits(r.limit),
        "message": text,
        "created_at": chrono::DateTime::from_timestamp(crate::tenancy::unix_now(), 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default(),
    })
}

/// Sends an alert to the tenant's addresses and webhook, logging each delivery; the webhook is
/// retried in the background.
pub async fn send(app: &Arc<App>, s: &AlertSettings, alert: Value) {
    let payload = alert.to_string();
    let row = |channel: &str, target: &str| AlertDelivery {
        id: 0,
        tenant_id: s.tenant_id,
        alert_id: alert["id"].as_str().unwrap_or("").to_string(),
        kind: alert["type"].as_str().unwrap_or("").to_string(),
        subject: alert["subject"]["name"].as_str().unwrap_or("").to_string(),
        channel: channel.into(),
        target: target.into(),
        state: "pending".into(),
        attempts: 0,
        last_error: None,
        payload: payload.clone(),
        created_at: 0,
        updated_at: 0,
    };
    let smtp = app.config().smtp.clone();
    for to in &s.emails {
        let id = log(app, row("email", to)).await;
        let result = match &smtp {
            None => Err("no [smtp] relay is configured".to_string()),
            Some(smtp) => {
                crate::mail::send(
                    smtp,
                    to,
                    &format!(
                        "[tollgate] {}",
                        alert["message"].as_str().unwrap_or("alert")
                    ),
                    format!(
                        "{}\n\nThreshold: {}\nTenant: {}\nAlert id: {}\n",
                        alert["message"].as_str().unwrap_or(""),
                        alert["threshold"].as_str().unwrap_or(""),
                        alert["tenant"]["name"].as_str().unwrap_or(""),
                        alert["id"].as_str().unwrap_or("")
                    ),
                )
                .await
            }
        };
        finish(app, id, "email", 1, result.err()).await;
    }
    if let (Some(url), Some(secret)) = (s.webhook_url.clone(), s.webhook_secret.clone()) {
        let id = log(app, row("webhook", &url)).await;
        let app = app.clone();
        tokio::spawn(async move {
            let mut wait = Duration::from_secs(1);
            for attempt in 1..=WEBHOOK_ATTEMPTS {
                let t = crate::tenancy::unix_now();
                let signature = crate::payments::stripe::sign(payload.as_bytes(), &secret, t);
                let headers = [
                    ("Tollgate-Signature", signature),
                    ("User-Agent", "tollgate-alerts".to_string()),
                ];
                let result = crate::payments::request(
                    "POST",
                    &url,
                    &headers,
                    Some(("application/json", bytes::Bytes::from(payload.clone()))),
                )
                .await
                .and_then(|a| {
                    if (200..300).contains(&a.status) {
                        Ok(())
                    } else {
                        Err(format!("answered {}", a.status))
                    }
                });
                match result {
                    Ok(()) => {
                        finish(&app, id, "webhook", attempt, None).await;
                        return;
                    }
                    Err(e) if attempt == WEBHOOK_ATTEMPTS => {
                        finish(&app, id, "webhook", attempt, Some(e)).await;
                        return;
                    }
                    Err(e) => {
                        METRICS
                            .alert_deliveries
                            .with_label_values(&["webhook", "retried"])
                            .inc();
                        update(&app, id, "pending", attempt, Some(e)).await;
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
        });
    }
}

async fn log(app: &App, d: AlertDelivery) -> i64 {
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || store.add_alert_delivery(&d))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0)
}

async fn update(app: &App, id: i64, state: &'static str, attempts: i64, error: Option<String>) {
    let store = app.store.clone();
    let _ = tokio::task::spawn_blocking(move || {
        store.update_alert_delivery(id, state, attempts, error.as_deref())
    })
    .await;
}

async fn finish(app: &App, id: i64, channel: &str, attempts: i64, error: Option<String>) {
    let outcome = if error.is_none() {
        "delivered"
    } else {
        "failed"
    };
    METRICS
        .alert_deliveries
        .with_label_values(&[channel, outcome])
        .inc();
    if let Some(e) = &error {
        tracing::warn!(channel, delivery = id, error = %e, "alert delivery failed");
    }
    update(app, id, outcome, attempts, error).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_levels_count_the_thresholds_reached() {
        let p = [80, 100];
        assert_eq!(quota_level(&p, 0, 1000), (0, None));
        assert_eq!(quota_level(&p, 799, 1000), (0, None));
        assert_eq!(quota_level(&p, 800, 1000), (1, Some(80)));
        assert_eq!(quota_level(&p, 1000, 1000), (2, Some(100)));
        assert_eq!(quota_level(&p, 5000, 1000), (2, Some(100)));
        assert_eq!(quota_level(&p, 5, 0), (0, None));
        // No overflow near the top of the range.
        assert_eq!(quota_level(&p, i64::MAX, i64::MAX), (2, Some(100)));
    }
}
