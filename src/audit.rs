//! The audit trail (issue 18): every change made through the admin API or the console, who made
//! it (operator, user, token), from where (client address, user agent), when, what (method,
//! route, path), its outcome, and the values before and after (secrets never stored), with the
//! request id. Append-only in the store and chained: each entry carries the hash of the one
//! before, so an edited or deleted row is found by `tollgate audit verify`. Each entry is also
//! written to the structured log (target `audit`) for a SIEM, which anchors the chain outside
//! the database (a truncated tail is found by comparing the last hash logged).

use crate::store::sqlite::{audit_hash, AuditRow, Store, StoreError, AUDIT_GENESIS};
use serde_json::Value;

/// Field names whose values are secrets: replaced by `"[redacted]"` before anything is stored.
const SECRET_FIELDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "current_password",
    "new_password",
    "webhook_secret",
    "code",
    "codes",
    "csrf",
    "invite_url",
    "reset_url",
    "link",
    "api_key",
    "authorization",
    // Single sign-on: the provider URL of a flow in flight (its state and nonce).
    "authorization_url",
];

/// A JSON value with every secret field's value replaced.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let secret = SECRET_FIELDS.contains(&k.to_ascii_lowercase().as_str())
                        || k.ends_with("_secret")
                        || k.ends_with("_password")
                        || k.ends_with("_token");
                    let v = if secret && !v.is_null() {
                        Value::String("[redacted]".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry chains to the one before; `entries` of them, the last with `head`.
    Intact { entries: u64, head: String },
    /// The first entry that does not verify, and why.
    Broken { seq: i64, why: String },
}

/// Walks the whole chain in order and checks every link: the hash of each entry's text, its
/// link to the previous entry's hash, its sequence number (a deleted row leaves a gap), and that
/// the columns say what the hashed text says.
pub fn verify(store: &Store) -> Result<Verdict, StoreError> {
    let (mut after, mut prev, mut entries) = (0i64, AUDIT_GENESIS.to_string(), 0u64);
    loop {
        let rows = store.audit_chain(after, 1000)?;
        if rows.is_empty() {
            return Ok(Verdict::Intact {
                entries,
                head: prev,
            });
        }
        for r in rows {
            if let Some(why) = broken(&r, after, &prev) {
                return Ok(Verdict::Broken { seq: r.seq, why });
            }
            after = r.seq;
            prev = r.hash.clone();
            entries += 1;
        }
    }
}

fn broken(r: &AuditRow, last_seq: i64, prev: &str) -> Option<String> {
    if r.seq != last_seq + 1 {
        return Some(format!(
            "entries {} to {} are missing",
            last_seq + 1,
            r.seq - 1
        ));
    }
    if r.prev_hash != prev {
        return Some("it does not chain to the entry before it".into());
    }
    if audit_hash(&r.prev_hash, &r.entry) != r.hash {
        return Some("its text does not match its hash (edited)".into());
    }
    let text: Value = serde_json::from_str(&r.entry).unwrap_or(Value::Null);
    let same = text["seq"] == r.seq
        && text["at_ms"] == r.at_ms
        && text["actor"] == r.actor.as_str()
        && text["action"] == r.action.as_str()
        && text["status"] == r.status
        && text["tenant_id"] == serde_json::json!(r.tenant_id.map(|t| t.0));
    if !same {
        return Some("its columns differ from its hashed text (edited)".into());
    }
    None
}

/// Records one event: in the store (chained) and in the structured log.
#[allow(clippy::too_many_arguments)]
pub fn record(
    store: &Store,
    tenant: Option<crate::tenancy::TenantId>,
    actor: &str,
    action: &str,
    status: i64,
    fields: &Value,
) -> Result<AuditRow, StoreError> {
    let at_ms = crate::store::sqlite::unix_now_ms();
    let row = store.append_audit(at_ms, tenant, actor, action, status, fields)?;
    tracing::info!(
        target: "audit",
        seq = row.seq,
        hash = %row.hash,
        tenant = ?tenant.map(|t| t.0),
        actor,
        action,
        status,
        entry = %row.entry,
        "audit"
    );
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let v = json!({"name": "ci", "key": "tg-secret", "data": [{"password": "p", "email": "a@b"}],
                       "webhook_secret": null, "smtp_password": "x", "nested": {"token": "t"}});
        let r = redact(&v);
        assert_eq!(r["name"], "ci");
        assert_eq!(r["key"], "[redacted]");
        assert_eq!(r["data"][0]["password"], "[redacted]");
        assert_eq!(r["data"][0]["email"], "a@b");
        assert_eq!(r["webhook_secret"], Value::Null);
        assert_eq!(r["smtp_password"], "[redacted]");
        assert_eq!(r["nested"]["token"], "[redacted]");
        assert!(!r.to_string().contains("tg-secret"));
    }

    #[test]
    fn the_chain_finds_edits_deletions_and_reordering() {
        let s = Store::open_in_memory().unwrap();
        for i in 0..5 {
            record(
                &s,
                None,
                "operator",
                &format!("POST /admin/x/{i}"),
                200,
                &json!({"i": i}),
            )
            .unwrap();
        }
        assert!(matches!(
            verify(&s).unwrap(),
            Verdict::Intact { entries: 5, .. }
        ));
        // An edited column.
        s.with(|c| {
            c.execute("UPDATE audit_log SET actor = 'someone' WHERE seq = 3", [])?;
            Ok(())
        })
        .unwrap();
        assert_eq!(
            verify(&s).unwrap(),
            Verdict::Broken {
                seq: 3,
                why: "its columns differ from its hashed text (edited)".into()
            }
        );
        s.with(|c| {
            c.execute("UPDATE audit_log SET actor = 'operator' WHERE seq = 3", [])?;
            Ok(())
        })
        .unwrap();
        // Edited text, even with its own hash recomputed: the next link breaks.
        s.with(|c| {
            let (prev, entry): (String, String) = c.query_row(
                "SELECT prev_hash, entry FROM audit_log WHERE seq = 2",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let entry = entry.replace("\"i\":1", "\"i\":9");
            c.execute(
                "UPDATE audit_log SET entry = ?1, hash = ?2 WHERE seq = 2",
                rusqlite::params![entry, audit_hash(&prev, &entry)],
            )?;
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            verify(&s).unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
        // A deleted row.
        let s = Store::open_in_memory().unwrap();
        for i in 0..4 {
            record(&s, None, "operator", "POST /admin/y", 201, &json!({"i": i})).unwrap();
        }
        s.with(|c| {
            c.execute("DELETE FROM audit_log WHERE seq = 2", [])?;
            Ok(())
        })
        .unwrap();
        assert!(matches!(
            verify(&s).unwrap(),
            Verdict::Broken { seq: 3, .. }
        ));
    }
}
