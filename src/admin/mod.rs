//! The admin API: a small HTTP service on its own port (loopback by default), hosted as a
//! Pingora service so that graceful upgrades hand its listener over like the gateway's.
//!
//! Routing and handlers are axum's, one handler per route, with the OpenAPI description
//! generated from the handlers' types (utoipa) and served at `GET /openapi.json`, so code and
//! description cannot drift (tests/admin_api.rs checks both ways). Pingora reads each request
//! (head and body, bounded) and writes the answer; axum only routes and extracts.
//!
//! Unauthenticated: `GET /healthz`, `GET /readyz`, `GET /metrics` (Prometheus text format),
//! `GET /openapi.json`, `POST /admin/invites/accept`. Everything else under `/admin/` needs
//! `Authorization: Bearer <token>`: the operator token (`$TOLLGATE_ADMIN_TOKEN`, every tenant)
//! or a tenant user's token (their own tenant only, by role: tenant_admin, member, viewer).
//! Every endpoint checks role and tenant; another tenant's resources answer 404 exactly like
//! missing ones. Units (`wire`): credits as decimal strings, times as RFC 3339, names next to
//! ids; errors use the data plane's JSON shape.

mod alerts;
mod audit;
mod auth;
mod credits;
mod host;
mod keys;
mod listing;
mod members;
mod ops;
mod payments;
mod sessions;
mod sso;
mod tenants;
mod usage;
mod wire;

pub use auth::{same_secret, AuthThrottle, ClientIp};
pub use host::AdminApi;
pub use sessions::{hash_password, MIN_PASSWORD};

use crate::app::App;
use crate::billing::entry::Account;
use crate::error::GatewayError;
use crate::store::sqlite::StoreError;
use crate::tenancy::{Tenant, TenantId};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use wire::{store_error, Names, Spend};

/// What every handler shares.
pub struct Admin {
    pub app: Arc<App>,
    pub auth_throttle: AuthThrottle,
    /// The generated API description, served at `GET /openapi.json`.
    openapi: Vec<u8>,
    /// The API itself (the audit layer reads a resource's value before a change through it).
    pub api: std::sync::OnceLock<axum::Router>,
    /// Identity providers' metadata and keys (console single sign-on).
    pub sso: crate::sso::Providers,
}

impl Admin {
    /// Runs a store call on the blocking pool.
    pub async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&App) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, GatewayError> {
        let app = self.app.clone();
        match tokio::task::spawn_blocking(move || f(&app)).await {
            Ok(r) => r.map_err(store_error),
            Err(e) => Err(GatewayError::Internal(e.to_string())),
        }
    }

    /// A tenant by id or name.
    pub async fn tenant(&self, id_or_name: &str) -> Result<Tenant, GatewayError> {
        let t = id_or_name.to_string();
        self.blocking(move |a| a.store.find_tenant(&t)).await
    }

    /// The names of a tenant's keys, users and groups.
    /// [`Admin::names`] of the tenants of a listing's rows (each once).
    pub async fn names_of(
        &self,
        tenants: impl Iterator<Item = TenantId>,
    ) -> Result<Names, GatewayError> {
        let mut ids: Vec<TenantId> = tenants.collect();
        ids.sort();
        ids.dedup();
        self.names(&ids).await
    }

    pub async fn names(&self, tenants: &[TenantId]) -> Result<Names, GatewayError> {
        let tenants = tenants.to_vec();
        self.blocking(move |a| {
            let mut n = Names::default();
            for t in tenants {
                n.tenants
                    .insert(t.0, a.store.find_tenant(&t.0.to_string())?.name);
                for k in a.store.list_keys(Some(t))? {
                    n.keys.insert(k.id.0, k.name);
                }
                for u in a.store.list_users(t)? {
                    n.users.insert(u.id.0, (u.email, u.name));
                }
                for g in a.store.list_groups(t)? {
                    n.groups.insert(g.id.0, g.name);
                }
            }
            Ok(n)
        })
        .await
    }

    pub fn spend(&self, tenant: TenantId, account: Account) -> Spend {
        wire::spend_of(&self.app, tenant, account)
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "tollgate admin API",
        description = "Tenants, members, departments, API keys, credits, usage and analytics of the tollgate LLM gateway. Credits are decimal strings, times RFC 3339 (inputs also take unix seconds), listings are paged with `limit` and `cursor` and filtered with `from`/`to`. Errors: `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "health", description = "Liveness, readiness, metrics and this description"),
        (name = "tenants", description = "Tenants, their limits, quota period and router settings"),
        (name = "members", description = "Users, departments/projects, invitations and user tokens"),
        (name = "keys", description = "API keys of the data plane"),
        (name = "credits", description = "Balances, top-ups, adjustments, statements, codes and promotions"),
        (name = "usage", description = "Usage records, analytics and routing savings"),
        (name = "operations", description = "Channels, configuration reload and status"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operator token ($TOLLGATE_ADMIN_TOKEN) or a tenant user's token",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route, with its description.
fn api() -> OpenApiRouter<Arc<Admin>> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(ops::openapi))
        .routes(routes!(ops::me))
        .routes(routes!(ops::channels))
        .routes(routes!(ops::prices))
        .routes(routes!(ops::reload))
        .routes(routes!(ops::config_status))
        .routes(routes!(tenants::list_tenants, tenants::create_tenant))
        .routes(routes!(tenants::get_tenant))
        .routes(routes!(
            tenants::set_tenant_limits_put,
            tenants::set_tenant_limits
        ))
        .routes(routes!(tenants::quota_period))
        .routes(routes!(
            tenants::router_get,
            tenants::router_put,
            tenants::router_delete
        ))
        .routes(routes!(members::list_users, members::create_user))
        .routes(routes!(members::get_user, members::update_user))
        .routes(routes!(
            members::set_user_limits_put,
            members::set_user_limits
        ))
        .routes(routes!(members::list_tokens, members::create_token))
        .routes(routes!(members::revoke_token))
        .routes(routes!(members::list_groups, members::create_group))
        .routes(routes!(members::update_group))
        .routes(routes!(members::list_invites, members::create_invite))
        .routes(routes!(members::revoke_invite))
        .routes(routes!(members::accept_invite))
        .routes(routes!(members::lookup_invite))
        .routes(routes!(sessions::sign_in))
        .routes(routes!(sessions::sign_out))
        .routes(routes!(sessions::change_password))
        .routes(routes!(sessions::request_reset))
        .routes(routes!(sessions::use_reset))
        .routes(routes!(sessions::lookup_reset))
        .routes(routes!(sessions::admin_reset))
        .routes(routes!(sso::get_sso, sso::set_sso, sso::delete_sso))
        .routes(routes!(sso::start))
        .routes(routes!(sso::callback))
        .routes(routes!(keys::list_keys, keys::create_key))
        .routes(routes!(keys::get_key, keys::update_key, keys::delete_key))
        .routes(routes!(keys::revoke_key))
        .routes(routes!(keys::rotate_key))
        .routes(routes!(keys::set_key_limits_put, keys::set_key_limits))
        .routes(routes!(credits::balance))
        .routes(routes!(credits::top_up))
        .routes(routes!(credits::adjust))
        .routes(routes!(credits::statement))
        .routes(routes!(credits::money_in))
        .routes(routes!(credits::redeem))
        .routes(routes!(credits::claim_promo))
        .routes(routes!(payments::create_order, payments::list_orders))
        .routes(routes!(payments::all_orders))
        .routes(routes!(payments::promo_preview))
        .routes(routes!(payments::reconciliation))
        .routes(routes!(payments::stripe_webhook))
        .routes(routes!(payments::alipay_notify))
        .routes(routes!(payments::wechat_notify))
        .routes(routes!(payments::sync_order))
        .routes(routes!(payments::refund_order))
        .routes(routes!(payments::list_refunds))
        .routes(routes!(alerts::get_alerts, alerts::set_alerts))
        .routes(routes!(alerts::deliveries))
        .routes(routes!(alerts::test_alert))
        .routes(routes!(keys::get_key_network, keys::set_key_network))
        .routes(routes!(keys::get_tenant_network, keys::set_tenant_network))
        .routes(routes!(keys::get_guardrails, keys::set_guardrails))
        .routes(routes!(audit::all_audit))
        .routes(routes!(audit::tenant_audit))
        .routes(routes!(credits::list_codes, credits::create_codes))
        .routes(routes!(credits::list_promos, credits::create_promo))
        .routes(routes!(usage::list_usage))
        .routes(routes!(usage::analytics))
        .routes(routes!(usage::routing))
}

/// The API description, as served.
pub fn openapi() -> utoipa::openapi::OpenApi {
    describe_responses(api().into_openapi())
}

/// A response declared without a description gets its status's reason phrase (the OpenAPI
/// schema requires one on every response).
fn describe_responses(mut doc: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::RefOr;
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
        ];
        for op in operations.into_iter().flatten() {
            for (status, response) in op.responses.responses.iter_mut() {
                if let RefOr::T(response) = response {
                    if response.description.is_empty() {
                        response.description = status
                            .parse::<u16>()
                            .ok()
                            .and_then(|s| http::StatusCode::from_u16(s).ok())
                            .and_then(|s| s.canonical_reason())
                            .unwrap_or("Response")
                            .to_string();
                    }
                }
            }
        }
    }
    doc
}

fn router(app: Arc<App>) -> axum::Router {
    let (router, doc) = api().split_for_parts();
    let doc = describe_responses(doc);
    let admin = Arc::new(Admin {
        app,
        auth_throttle: AuthThrottle::default(),
        openapi: doc.to_pretty_json().unwrap_or_default().into_bytes(),
        api: std::sync::OnceLock::new(),
        sso: crate::sso::Providers::default(),
    });
    let api = router
        .fallback(ops::unknown_path)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            audit::layer,
        ))
        .with_state(admin.clone());
    let _ = admin.api.set(api.clone());
    // The console's pages call the API in process (crate::console): it is their only back end.
    api.clone().merge(crate::console::router(api, admin))
}

#[cfg(test)]
mod tests {
    /// docs/openapi.json is the served description, written out for readers: regenerate it
    /// with `UPDATE_OPENAPI=1 cargo test --lib openapi_document`.
    #[test]
    fn openapi_document_in_docs_is_current() {
        let served = super::openapi().to_pretty_json().unwrap_or_default() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        if std::env::var_os("UPDATE_OPENAPI").is_some() {
            std::fs::write(path, &served).unwrap_or_default();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            on_disk == served,
            "docs/openapi.json differs from the served description; run UPDATE_OPENAPI=1 cargo test --lib openapi_document"
        );
    }
}
