//! Money: balances, top-ups and adjustments (idempotent), statements with a running balance
//! (JSON pages or CSV), redemption codes and promotions.

use super::auth::Principal;
use super::listing::{self, Export, StatementCursor};
use super::wire::{
    bad_param, credits, opt_time, page_limit, positive_nano, range_ms, time, time_ms, ApiResult,
    BalanceOut, BankOut, EntryOut, ErrorBody, Instant, JsonBody, ListQuery, Names, NodeLease, Page,
    PathParams, QueryParams, MAX_PAGE,
};
use super::Admin;
use crate::billing::cluster::BankError;
use crate::billing::entry::{EntryKind, LedgerEntry};
use crate::billing::fleet::FleetError;
use crate::billing::ledger::BalanceView;
use crate::error::GatewayError;
use crate::store::sqlite::{
    CallDetail, Credited, IdempotencyKey, IdempotentRecord, PromoBonus, PromoCampaign,
    RedemptionCode,
};
use crate::tenancy::{Role, Tenant, TenantId};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

/// How long a replay waits for the first request with its idempotency key to answer before
/// answering from the entries that request committed.
const IDEMPOTENT_ANSWER_WAIT_MS: i64 = 10_000;

/// A tenant's balance: this process's books (embedded mode) or the shared bank (cluster mode,
/// where `available` includes allowance leased by nodes, holds in flight among it).
pub async fn balance_of(admin: &Admin, tenant: &Tenant) -> Result<BalanceOut, GatewayError> {
    let out = |v: BalanceView, bank| BalanceOut {
        tenant_id: tenant.id.0,
        tenant_name: tenant.name.clone(),
        available: credits(v.available),
        reserved: credits(v.reserved),
        charged: credits(v.charged),
        credited: credits(v.credited),
        bank,
    };
    let Some(fleet) = admin.app.ledger.fleet() else {
        return Ok(out(admin.app.ledger.balance(tenant.id), None));
    };
    let t = fleet.totals(tenant.id).await.map_err(|e| {
        GatewayError::CreditUnavailable(format!("The credit bank is unavailable: {e}"))
    })?;
    let v = BalanceView {
        available: t.bal + t.leases,
        reserved: 0,
        charged: t.spent,
        credited: t.credited,
    };
    let bank = BankOut {
        unleased: credits(t.bal),
        leases: credits(t.leases),
        spent: credits(t.spent),
        credited: credits(t.credited),
        nodes: t
            .by_node
            .iter()
            .map(|(node, lease)| NodeLease {
                node: node.clone(),
                lease: credits(*lease),
            })
            .collect(),
    };
    Ok(out(v, Some(bank)))
}

/// A tenant's balance (tenant admin, viewer).
#[utoipa::path(get, path = "/admin/tenants/{t}/balance", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")),
    responses((status = 200, body = BalanceOut), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "Cluster mode: the credit bank is unavailable")))]
pub async fn balance(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
) -> ApiResult<Json<BalanceOut>> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin, Role::Viewer])?;
    Ok(Json(balance_of(&admin, &tenant).await?))
}

/// Applies committed credit entries to the live books.
pub(super) async fn apply_credits(admin: &Admin, entries: &[LedgerEntry]) {
    for e in entries {
        admin.app.ledger.apply_committed(e);
    }
    if let Some(fleet) = admin.app.ledger.fleet() {
        // Cluster mode: the entries are in SQL; replay them into Redis now rather than at the
        // next background round (the background replay retries if this fails).
        if let Err(e) = fleet.replay_credits().await {
            tracing::warn!(error = %e, "credit replay after a credit failed; the background replay retries");
        }
    }
}

/// The answer to a credit: its entries and the balance after them.
#[derive(Serialize, ToSchema)]
pub struct CreditedOut {
    /// The entries made (a top-up and its promotion bonus, or one entry).
    pub entries: Vec<EntryOut>,
    pub balance: Option<BalanceOut>,
}

async fn credited_out(
    admin: &Admin,
    tenant: &Tenant,
    entries: &[LedgerEntry],
) -> Result<CreditedOut, GatewayError> {
    let names = admin.names(&[tenant.id]).await?;
    Ok(CreditedOut {
        entries: entries.iter().map(|e| EntryOut::from(e, &names)).collect(),
        balance: balance_of(admin, tenant).await.ok(),
    })
}

/// An idempotency key as sent (1-255 characters), scoped to `scope` (and, in the store, to the
/// tenant), with a digest of the request's parameters.
fn idempotency_key(
    scope: &'static str,
    key: &str,
    params: serde_json::Value,
) -> Result<IdempotencyKey, GatewayError> {
    if key.is_empty() || key.len() > 255 {
        return Err(bad_param(
            "idempotency_key",
            "`idempotency_key` must be 1-255 characters",
        ));
    }
    use sha2::{Digest, Sha256};
    Ok(IdempotencyKey {
        scope,
        key: key.to_string(),
        fingerprint: hex::encode(Sha256::digest(params.to_string().as_bytes())),
    })
}

fn json_answer(status: u16, body: String) -> Response {
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED),
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The answer to a top-up or adjustment: for entries committed now, apply them and answer
/// (recording the answer under the idempotency key, if any); for a key used before, the first
/// answer.
async fn credited(
    admin: &Admin,
    tenant: &Tenant,
    idem: Option<IdempotencyKey>,
    outcome: Credited,
) -> ApiResult<Response> {
    let entries = match outcome {
        Credited::Committed(entries) => entries,
        Credited::Replay(first) => {
            return match idem {
                Some(k) => replay(admin, tenant, &k, first).await,
                None => Err(GatewayError::Internal("a replay without a key".into()).into()),
            }
        }
    };
    apply_credits(admin, &entries).await;
    let body = serde_json::to_string(&credited_out(admin, tenant, &entries).await?)
        .map_err(|e| GatewayError::Internal(e.to_string()))?;
    if let Some(k) = idem {
        let (text, t) = (body.clone(), tenant.id);
        let stored = admin
            .blocking(move |a| a.store.answer_idempotent(t, k.scope, &k.key, 201, &text))
            .await;
        if let Err(e) = stored {
            // A replay then answers from the committed entries (see `replay`).
            tracing::warn!(error = %e, "the answer to an idempotent request was not recorded");
        }
    }
    Ok(json_answer(201, body))
}

/// Answer a request whose idempotency key was used before: refused when the parameters differ,
/// else the first answer (same status and body). While the first request is still answering,
/// wait for it; a first request that committed but never recorded its answer (the process died
/// in between, or the key predates recorded answers) is answered from the entries it committed.
async fn replay(
    admin: &Admin,
    tenant: &Tenant,
    k: &IdempotencyKey,
    mut first: IdempotentRecord,
) -> ApiResult<Response> {
    if !first.fingerprint.is_empty() && first.fingerprint != k.fingerprint {
        return Err(bad_param(
            "idempotency_key",
            "This idempotency key was already used with different parameters.",
        )
        .into());
    }
    let (scope, key, t) = (k.scope, k.key.clone(), tenant.id);
    loop {
        if let Some((status, body)) = first.answer {
            return Ok(json_answer(status, body));
        }
        let now_ms = crate::tenancy::unix_now() * 1000;
        if now_ms >= first.created_ms + IDEMPOTENT_ANSWER_WAIT_MS {
            let ids = first.entry_ids.clone();
            let entries = admin
                .blocking(move |a| a.store.entries_by_id(t, &ids))
                .await?;
            let body = serde_json::to_string(&credited_out(admin, tenant, &entries).await?)
                .map_err(|e| GatewayError::Internal(e.to_string()))?;
            let key = key.clone();
            admin
                .blocking(move |a| a.store.answer_idempotent(t, scope, &key, 201, &body))
                .await?;
        } else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let key = key.clone();
        first = admin
            .blocking(move |a| a.store.idempotent_record(t, scope, &key))
            .await?
            .ok_or_else(|| GatewayError::Internal("an idempotency key vanished".into()))?;
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUp {
    /// Money received, in RMB; converted at the configured credits per RMB.
    #[schema(value_type = String, example = "100")]
    pub amount_rmb: Decimal,
    /// A promotion campaign code to apply to this top-up.
    #[serde(default)]
    pub promo_code: Option<String>,
    #[serde(default)]
    pub note: Option<String>,
    /// The same top-up sent twice with one key is applied once (and answered alike).
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Credit a tenant for money received (operator).
#[utoipa::path(post, path = "/admin/tenants/{t}/topups", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = TopUp,
    responses((status = 201, body = CreditedOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn top_up(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<TopUp>,
) -> ApiResult<Response> {
    who.require_operator()?;
    let tenant = admin.tenant(&t).await?;
    let credits = req.amount_rmb * admin.app.config().billing.credits_per_rmb;
    let amount = positive_nano(credits, "amount_rmb")?;
    let idem = req
        .idempotency_key
        .as_deref()
        .map(|k| {
            idempotency_key(
                "topup",
                k,
                json!([amount, req.promo_code.as_deref(), req.note.as_deref()]),
            )
        })
        .transpose()?;
    let id = format!("topup:{}", crate::tenancy::keys::generate_key());
    let (note, promo, idem2, tid) = (req.note, req.promo_code, idem.clone(), tenant.id);
    let outcome = admin
        .blocking(move |a| {
            a.store.top_up(
                tid,
                amount,
                promo.as_deref(),
                Some("operator"),
                note.as_deref(),
                &id,
                idem2.as_ref(),
            )
        })
        .await?;
    credited(&admin, &tenant, idem, outcome).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// Signed, in credits.
    #[schema(value_type = String, example = "-5")]
    pub credits: Decimal,
    pub note: String,
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

/// Correct a tenant's balance by a signed amount (operator); a negative one never below what
/// is available.
#[utoipa::path(post, path = "/admin/tenants/{t}/adjustments", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = Adjustment,
    responses((status = 201, body = CreditedOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn adjust(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<Adjustment>,
) -> ApiResult<Response> {
    who.require_operator()?;
    let tenant = admin.tenant(&t).await?;
    let tid = tenant.id;
    let amount = crate::billing::pricing::to_nano(req.credits)
        .filter(|n| *n != 0)
        .ok_or_else(|| bad_param("credits", "`credits` must be a non-zero amount"))?;
    let idem = req
        .idempotency_key
        .as_deref()
        .map(|k| idempotency_key("adjust", k, json!([amount, req.note])))
        .transpose()?;
    let id = match &idem {
        Some(k) => {
            // A replay is answered before anything moves (in cluster mode, before the debit).
            let (scope, key) = (k.scope, k.key.clone());
            let first = admin
                .blocking(move |a| a.store.idempotent_record(tid, scope, &key))
                .await?;
            if let Some(first) = first {
                return replay(&admin, &tenant, k, first).await;
            }
            k.entry_id(tid)
        }
        None => format!("adjust:{}", crate::tenancy::keys::generate_key()),
    };
    let refused = || {
        bad_param(
            "credits",
            "A negative adjustment cannot exceed the available balance.",
        )
    };
    match admin.app.ledger.fleet() {
        // Cluster mode: debit Redis first (refused when the unleased balance cannot cover it),
        // then record; the replay of the recorded entry is a no-op. Concurrent requests with one
        // idempotency key debit once: the debit is idempotent on the entry id, which is the key's.
        Some(fleet) if amount < 0 => {
            if let Err(e) = fleet.debit_first(tid, amount, &id).await {
                return Err(match e {
                    FleetError::Bank(BankError::Insufficient { .. }) => refused(),
                    e => GatewayError::CreditUnavailable(format!(
                        "The credit bank is unavailable: {e}"
                    )),
                }
                .into());
            }
        }
        Some(_) => {}
        None => {
            if amount < 0 && admin.app.ledger.balance(tid).available < -amount {
                return Err(refused().into());
            }
        }
    }
    let (note, idem2) = (req.note, idem.clone());
    let outcome = admin
        .blocking(move |a| match idem2 {
            Some(k) => a.store.credit_idempotent(
                tid,
                EntryKind::Adjustment,
                amount,
                Some("operator"),
                Some(&note),
                &k,
            ),
            None => a
                .store
                .credit(
                    tid,
                    EntryKind::Adjustment,
                    amount,
                    Some("operator"),
                    Some(&note),
                    &id,
                )
                .map(|e| Credited::Committed(vec![e])),
        })
        .await?;
    credited(&admin, &tenant, idem, outcome).await
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatementQuery {
    /// At or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 10000).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// `csv`: the whole range (from the cursor on) as one CSV download.
    pub format: Option<String>,
}

/// A charge's call: model, channel and tokens.
#[derive(Serialize, ToSchema)]
pub struct CallOut {
    pub model: Option<String>,
    pub channel: Option<String>,
    pub prompt_tokens: i64,
    pub cached_tokens: i64,
    pub cache_write_tokens: i64,
    pub completion_tokens: i64,
    pub reasoning_tokens: i64,
}

impl CallOut {
    fn from(c: &CallDetail) -> CallOut {
        CallOut {
            model: c.model.clone(),
            channel: c.channel.clone(),
            prompt_tokens: c.prompt_tokens,
            cached_tokens: c.cached_tokens,
            cache_write_tokens: c.cache_write_tokens,
            completion_tokens: c.completion_tokens,
            reasoning_tokens: c.reasoning_tokens,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct StatementLine {
    pub entry: EntryOut,
    /// The balance after this entry.
    pub running_balance: String,
    /// Charges: the call.
    pub call: Option<CallOut>,
}

fn is_csv(format: Option<&str>) -> Result<bool, GatewayError> {
    match format {
        None | Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(_) => Err(bad_param("format", "`format` must be json or csv")),
    }
}

/// A tenant's statement, oldest first, with a running balance: top-ups, grants, codes,
/// promotions, adjustments and every charge (tenant admin, viewer). `format=csv` downloads it.
#[utoipa::path(get, path = "/admin/tenants/{t}/ledger", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), StatementQuery),
    responses((status = 200, body = Page<StatementLine>, description = "A page (JSON) or the whole range (text/csv)"),
        (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn statement(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<StatementQuery>,
) -> ApiResult<Response> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let (from, to) = range_ms(q.from.as_deref(), q.to.as_deref(), (i64::MIN, i64::MAX))?;
    let start = listing::statement_cursor(q.cursor.as_deref())?;
    if is_csv(q.format.as_deref())? {
        return Ok(Export::Statement {
            tenant,
            from_ms: from,
            to_ms: to,
            start,
        }
        .response(admin));
    }
    let limit = page_limit(q.limit, MAX_PAGE)?;
    let (after, mut running, mut row) =
        listing::statement_start(&admin, tenant, from, start).await?;
    let page = admin
        .blocking(move |a| a.store.statement_page(tenant, from, to, after, limit))
        .await?;
    let names = admin.names(&[tenant]).await?;
    let full = page.len() == limit as usize;
    let mut last = None;
    let data: Vec<_> = page
        .into_iter()
        .map(|r| {
            running += r.entry.amount;
            row += 1;
            last = Some(StatementCursor {
                pos: r.pos,
                running,
                row,
            });
            StatementLine {
                entry: EntryOut::from(&r.entry, &names),
                running_balance: credits(running),
                call: r.call.as_ref().map(CallOut::from),
            }
        })
        .collect();
    let next_cursor = last.filter(|_| full).map(|c| c.encode());
    Ok(Json(Page { data, next_cursor }).into_response())
}

/// Money in and adjustments (top-ups, grants, redemptions, promotions, refunds, adjustments:
/// every entry but charges), newest first (tenant admin, viewer): where the money came from.
#[utoipa::path(get, path = "/admin/tenants/{t}/credits", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name"), ListQuery),
    responses((status = 200, body = Page<EntryOut>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn money_in(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<EntryOut>>> {
    let tenant = admin.tenant(&t).await?.id;
    who.require(tenant, &[Role::TenantAdmin, Role::Viewer])?;
    let page = q.newest_first()?;
    let rows = admin
        .blocking(move |a| a.store.money_entries(tenant, page))
        .await?;
    let p = ListQuery::newest_page(page, rows, |(seq, _)| *seq);
    let names = admin.names(&[tenant]).await?;
    Ok(Json(Page {
        data: p
            .data
            .iter()
            .map(|(_, e)| EntryOut::from(e, &names))
            .collect(),
        next_cursor: p.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeem {
    pub code: String,
}

#[derive(Serialize, ToSchema)]
pub struct RedeemedOut {
    pub entry: EntryOut,
    pub balance: Option<BalanceOut>,
}

async fn redeemed(
    admin: &Admin,
    tenant: &Tenant,
    entry: LedgerEntry,
) -> ApiResult<(StatusCode, Json<RedeemedOut>)> {
    apply_credits(admin, std::slice::from_ref(&entry)).await;
    let names = admin.names(&[tenant.id]).await?;
    Ok((
        StatusCode::CREATED,
        Json(RedeemedOut {
            entry: EntryOut::from(&entry, &names),
            balance: balance_of(admin, tenant).await.ok(),
        }),
    ))
}

/// Redeem a code for credits (tenant admin).
#[utoipa::path(post, path = "/admin/tenants/{t}/redeem", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = Redeem,
    responses((status = 201, body = RedeemedOut), (status = 400, body = ErrorBody, description = "Used or expired"), (status = 404, body = ErrorBody)))]
pub async fn redeem(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<Redeem>,
) -> ApiResult<(StatusCode, Json<RedeemedOut>)> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let (actor, tid) = (who.actor(), tenant.id);
    let entry = admin
        .blocking(move |a| a.store.redeem(&req.code, tid, Some(&actor)))
        .await?;
    redeemed(&admin, &tenant, entry).await
}

/// Claim a fixed-bonus promotion, once per tenant (tenant admin).
#[utoipa::path(post, path = "/admin/tenants/{t}/promo", tag = "credits", security(("bearer" = [])),
    params(("t" = String, Path, description = "Tenant id or name")), request_body = Redeem,
    responses((status = 201, body = RedeemedOut), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn claim_promo(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    PathParams(t): PathParams<String>,
    JsonBody(req): JsonBody<Redeem>,
) -> ApiResult<(StatusCode, Json<RedeemedOut>)> {
    let tenant = admin.tenant(&t).await?;
    who.require(tenant.id, &[Role::TenantAdmin])?;
    let (actor, tid) = (who.actor(), tenant.id);
    let entry = admin
        .blocking(move |a| a.store.claim_fixed_promo(tid, &req.code, Some(&actor)))
        .await?;
    redeemed(&admin, &tenant, entry).await
}

/// A redemption code, never the code itself.
#[derive(Serialize, ToSchema)]
pub struct CodeOut {
    pub id: i64,
    pub prefix: String,
    pub batch: String,
    pub credits: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    /// `unused`, `redeemed` or `expired`.
    pub state: String,
    pub redeemed_by: Option<i64>,
    pub redeemed_by_name: Option<String>,
    pub redeemed_at: Option<String>,
}

fn code_out(c: &RedemptionCode, names: &Names) -> CodeOut {
    let by = c.redeemed_by.map(|t| t.0);
    CodeOut {
        id: c.id,
        prefix: c.prefix.clone(),
        batch: c.batch.clone(),
        credits: credits(c.amount_nano),
        created_at: time_ms(c.created_ms),
        expires_at: opt_time(c.expires_at),
        state: c.state.into(),
        redeemed_by: by,
        redeemed_by_name: names.tenant(by),
        redeemed_at: c.redeemed_ms.map(time_ms),
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CodeQuery {
    /// Only this batch.
    pub batch: Option<String>,
    /// Created at or after (RFC 3339 or unix seconds).
    pub from: Option<String>,
    /// Created before (RFC 3339 or unix seconds).
    pub to: Option<String>,
    /// Rows per page, 1 to 10000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Redemption codes (operator).
#[utoipa::path(get, path = "/admin/codes", tag = "credits", security(("bearer" = [])), params(CodeQuery),
    responses((status = 200, body = Page<CodeOut>), (status = 403, body = ErrorBody)))]
pub async fn list_codes(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<CodeQuery>,
) -> ApiResult<Json<Page<CodeOut>>> {
    who.require_operator()?;
    let batch = q.batch.clone();
    let codes = admin
        .blocking(move |a| a.store.list_codes(batch.as_deref()))
        .await?;
    let mut tenants: Vec<TenantId> = codes.iter().filter_map(|c| c.redeemed_by).collect();
    tenants.sort();
    tenants.dedup();
    let names = tenant_names(&admin, &tenants).await?;
    let window = ListQuery {
        from: q.from,
        to: q.to,
        limit: q.limit,
        cursor: q.cursor,
    };
    let page = window.page(codes, |c| c.id, |c| c.created_ms.div_euclid(1000))?;
    Ok(Json(Page {
        data: page.data.iter().map(|c| code_out(c, &names)).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn tenant_names(admin: &Admin, tenants: &[TenantId]) -> Result<Names, GatewayError> {
    let all = admin.blocking(|a| a.store.list_tenants()).await?;
    let mut n = Names::default();
    for t in all.into_iter().filter(|t| tenants.contains(&t.id)) {
        n.tenants.insert(t.id.0, t.name);
    }
    Ok(n)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCodes {
    /// Credits per code.
    #[schema(value_type = String, example = "10")]
    pub credits: Decimal,
    /// 1 to 10000.
    pub count: u32,
    #[serde(default)]
    pub batch: Option<String>,
    #[serde(default)]
    pub expires_at: Option<Instant>,
}

#[derive(Serialize, ToSchema)]
pub struct NewCodes {
    pub batch: String,
    pub credits: String,
    /// The codes, shown once.
    pub codes: Vec<String>,
}

/// Create a batch of redemption codes (operator).
#[utoipa::path(post, path = "/admin/codes", tag = "credits", security(("bearer" = [])), request_body = CreateCodes,
    responses((status = 201, body = NewCodes), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_codes(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    JsonBody(req): JsonBody<CreateCodes>,
) -> ApiResult<(StatusCode, Json<NewCodes>)> {
    who.require_operator()?;
    let amount = positive_nano(req.credits, "credits")?;
    let batch = req
        .batch
        .unwrap_or_else(|| format!("batch-{}", crate::tenancy::unix_now()));
    let b2 = batch.clone();
    let expires = super::wire::future(req.expires_at.map(|i| i.0))?;
    let codes = admin
        .blocking(move |a| a.store.create_codes(&b2, amount, req.count, expires))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewCodes {
            batch,
            credits: credits(amount),
            codes,
        }),
    ))
}

/// A promotion campaign.
#[derive(Serialize, ToSchema)]
pub struct PromoOut {
    pub id: i64,
    pub code: String,
    /// Fixed bonus in credits (granted once per tenant), if the campaign is fixed.
    pub bonus_credits: Option<String>,
    /// Bonus as a percentage of a top-up, if the campaign is a percentage.
    pub bonus_percent: Option<String>,
    pub expires_at: Option<String>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub created_at: String,
}

fn promo_out(p: &PromoCampaign) -> PromoOut {
    let (fixed, percent) = match p.bonus {
        PromoBonus::Fixed(n) => (Some(credits(n)), None),
        PromoBonus::Percent(bp) => (
            None,
            Some(
                (Decimal::from(bp) / Decimal::from(100))
                    .normalize()
                    .to_string(),
            ),
        ),
    };
    PromoOut {
        id: p.id,
        code: p.code.clone(),
        bonus_credits: fixed,
        bonus_percent: percent,
        expires_at: opt_time(p.expires_at),
        max_uses: p.max_uses,
        uses: p.uses,
        created_at: time(p.created_at),
    }
}

/// Promotion campaigns (operator).
#[utoipa::path(get, path = "/admin/promos", tag = "credits", security(("bearer" = [])), params(ListQuery),
    responses((status = 200, body = Page<PromoOut>), (status = 403, body = ErrorBody)))]
pub async fn list_promos(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<Page<PromoOut>>> {
    who.require_operator()?;
    let promos = admin.blocking(|a| a.store.list_promos()).await?;
    let page = q.page(promos, |p| p.id, |p| p.created_at)?;
    Ok(Json(Page {
        data: page.data.iter().map(promo_out).collect(),
        next_cursor: page.next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePromo {
    pub code: String,
    /// Fixed bonus in credits, granted once per tenant.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub credits: Option<Decimal>,
    /// Bonus as a percentage of the top-up it is applied to.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub percent: Option<Decimal>,
    #[serde(default)]
    pub expires_at: Option<Instant>,
    /// Cap on total uses across tenants.
    #[serde(default)]
    pub max_uses: Option<i64>,
}

/// Create a promotion campaign (operator): exactly one of `credits` or `percent`.
#[utoipa::path(post, path = "/admin/promos", tag = "credits", security(("bearer" = [])), request_body = CreatePromo,
    responses((status = 201, body = PromoOut), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn create_promo(
    State(admin): State<Arc<Admin>>,
    who: Principal,
    JsonBody(req): JsonBody<CreatePromo>,
) -> ApiResult<(StatusCode, Json<PromoOut>)> {
    who.require_operator()?;
    let bonus = match (req.credits, req.percent) {
        (Some(c), None) => PromoBonus::Fixed(positive_nano(c, "credits")?),
        (None, Some(p)) => {
            if p <= Decimal::ZERO || p > Decimal::from(100) {
                return Err(
                    bad_param("percent", "`percent` must be more than 0 and at most 100").into(),
                );
            }
            let bp = (p * Decimal::from(100)).round();
            PromoBonus::Percent(rust_decimal::prelude::ToPrimitive::to_i64(&bp).unwrap_or(0))
        }
        _ => {
            return Err(GatewayError::bad_request(
                "Give exactly one of `credits` (fixed bonus) or `percent` (of a top-up).",
            )
            .into())
        }
    };
    if req.max_uses.is_some_and(|n| n < 1) {
        return Err(bad_param("max_uses", "`max_uses` must be at least 1").into());
    }
    let expires = super::wire::future(req.expires_at.map(|i| i.0))?;
    let p = admin
        .blocking(move |a| {
            a.store
                .create_promo(&req.code, bonus, expires, req.max_uses)
        })
        .await?;
    Ok((StatusCode::CREATED, Json(promo_out(&p))))
}
