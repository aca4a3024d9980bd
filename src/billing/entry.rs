//! The ledger's domain types: what an entry is, its kinds, and the accounts a charge is
//! counted against. The record (`store`) stores and reads them; the ledger's logic
//! (`billing::ledger`) makes them. They depend on the tenancy ids only, so the store depends on
//! billing's types and billing's logic depends on the store, never the other way round.

use crate::tenancy::{GroupId, KeyId, TenantId, UserId};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    TopUp,
    Grant,
    Redemption,
    Promo,
    Adjustment,
    Charge,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::TopUp => "top_up",
            EntryKind::Grant => "grant",
            EntryKind::Redemption => "redemption",
            EntryKind::Promo => "promo",
            EntryKind::Adjustment => "adjustment",
            EntryKind::Charge => "charge",
        }
    }

    pub fn parse(s: &str) -> Option<EntryKind> {
        Some(match s {
            "top_up" => EntryKind::TopUp,
            "grant" => EntryKind::Grant,
            "redemption" => EntryKind::Redemption,
            "promo" => EntryKind::Promo,
            "adjustment" => EntryKind::Adjustment,
            "charge" => EntryKind::Charge,
            _ => return None,
        })
    }
}

/// One journal line. `amount` is signed nano-credits: credits positive, charges negative.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerEntry {
    /// Idempotency id, unique in the journal.
    pub id: String,
    pub tenant_id: TenantId,
    pub kind: EntryKind,
    pub amount: i64,
    pub key_id: Option<KeyId>,
    pub user_id: Option<UserId>,
    pub group_id: Option<GroupId>,
    pub request_id: Option<String>,
    pub actor: Option<String>,
    pub note: Option<String>,
    /// Part of a charge the accounts could not cover (never taken from the balance).
    pub uncollected: i64,
    pub created_ms: i64,
}

/// A spending limit inside a tenant: a key's quota, a user's quota or a group's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
pub enum Account {
    Key(KeyId),
    User(UserId),
    Group(GroupId),
}

impl Account {
    pub(crate) fn what(self) -> &'static str {
        match self {
            Account::Key(_) => "API key quota",
            Account::User(_) => "user quota",
            Account::Group(_) => "department/project budget",
        }
    }

    /// The static name of [`Account::what`] for a name read back (the upgrade hand-over).
    pub(crate) fn describe(what: &str) -> &'static str {
        [
            Account::Key(KeyId(0)),
            Account::User(UserId(0)),
            Account::Group(GroupId(0)),
        ]
        .into_iter()
        .map(Account::what)
        .find(|w| *w == what)
        .unwrap_or("quota")
    }
}
