//! Tenants and API keys: the SQL store (`store`) and the in-memory key snapshot the data plane
//! authenticates against without I/O (`keys`).

pub mod keys;
pub mod limits;

use std::sync::Arc;

use serde::Serialize;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct TenantId(pub i64);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct KeyId(pub i64);

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct UserId(pub i64);

/// A department or project: a group of users with an optional budget.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, PartialOrd, Ord,
)]
#[serde(transparent)]
pub struct GroupId(pub i64);

/// What a person may do through the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs the platform: every tenant, money in, configuration.
    Operator,
    /// Manages one tenant: members, groups, keys, quotas; reads its spend.
    TenantAdmin,
    /// Uses the gateway: manages their own keys, reads their own usage.
    Member,
    /// Read-only finance: balances, statements and analytics of one tenant.
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::TenantAdmin => "tenant_admin",
            Role::Member => "member",
            Role::Viewer => "viewer",
        }
    }

    /// Roles a tenant's users can hold (the operator is not a tenant user).
    pub fn parse_tenant_role(s: &str) -> Option<Role> {
        match s {
            "tenant_admin" => Some(Role::TenantAdmin),
            "member" => Some(Role::Member),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub group_id: Option<GroupId>,
    pub quota_nano: Option<i64>,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
    /// The member's own requests and tokens per minute (all their keys together).
    pub limits: limits::Limits,
    /// Console sign-in locked after repeated wrong passwords, until then (unix seconds).
    pub locked_until: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub id: GroupId,
    pub tenant_id: TenantId,
    pub name: String,
    pub budget_nano: Option<i64>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub created_at: i64,
    /// The tenant's own rate limits (every key of the tenant together).
    pub limits: limits::Limits,
}

/// An API key as the gateway sees it: who it belongs to and what it may use. Never the secret.
#[derive(Debug, Clone, Serialize)]
pub struct ApiKey {
    pub id: KeyId,
    pub tenant_id: TenantId,
    pub tenant_name: String,
    pub name: String,
    /// First characters of the key, for display.
    pub prefix: String,
    pub default_channel: String,
    /// Channels the key may select with the `x-tollgate-channel` header (the default is implied).
    pub allowed_channels: Vec<String>,
    /// Canonical model names the key may use; empty means every model its channels serve.
    pub allowed_models: Vec<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Lifetime spending cap in nano-credits (None: only the tenant's balance limits it).
    pub quota_nano: Option<i64>,
    /// The member the key belongs to (keys made by operators for a tenant may have none).
    pub user_id: Option<UserId>,
    pub user_quota_nano: Option<i64>,
    pub group_id: Option<GroupId>,
    pub group_budget_nano: Option<i64>,
    pub user_disabled: bool,
    /// The tenant's quota period: key quotas, user quotas and department budgets count the
    /// spend of the current period only.
    pub quota_period: QuotaPeriod,
    /// The tenant's override of the complexity router's policy.
    #[serde(skip)]
    pub router_override: Option<Arc<crate::router::TenantRouterOverride>>,
    pub key_limits: limits::Limits,
    pub user_limits: limits::Limits,
    pub tenant_limits: limits::Limits,
    /// Where the key may be used from (its own and its tenant's allow-lists); `None`: anywhere.
    #[serde(skip)]
    pub network: Option<Arc<NetworkRule>>,
    /// The tenant's prompt guardrails, compiled; `None`: none.
    #[serde(skip)]
    pub guardrails: Option<Arc<crate::guardrails::Compiled>>,
}

/// Client networks a key may be used from: the key's list and its tenant's list; an address
/// must be in each list that is not empty.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRule {
    pub key: Vec<ipnet::IpNet>,
    pub tenant: Vec<ipnet::IpNet>,
}

impl NetworkRule {
    /// The rule of two stored lists (JSON arrays of CIDRs); `None` when both are empty.
    pub fn from_lists(key: Option<&str>, tenant: Option<&str>) -> Option<Arc<NetworkRule>> {
        let parse = |t: Option<&str>| -> Vec<ipnet::IpNet> {
            t.and_then(|j| serde_json::from_str::<Vec<String>>(j).ok())
                .unwrap_or_default()
                .iter()
                .filter_map(|c| parse_cidr(c).ok())
                .collect()
        };
        let rule = NetworkRule {
            key: parse(key),
            tenant: parse(tenant),
        };
        (!rule.key.is_empty() || !rule.tenant.is_empty()).then(|| Arc::new(rule))
    }

    /// Which list refuses `ip`, if one does (`"key"` or `"tenant"`).
    pub fn refuses(&self, ip: Option<std::net::IpAddr>) -> Option<&'static str> {
        let inside = |list: &[ipnet::IpNet]| {
            list.is_empty()
                || ip.is_some_and(|ip| {
                    let ip = canonical_ip(ip);
                    list.iter().any(|n| n.contains(&ip))
                })
        };
        if !inside(&self.key) {
            Some("key")
        } else if !inside(&self.tenant) {
            Some("tenant")
        } else {
            None
        }
    }
}

/// An IPv4 address seen as IPv6 (`::ffff:a.b.c.d`, a dual-stack socket) is the IPv4 address.
pub fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the socket's peer, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` (read right to left) that is not itself a trusted proxy.
pub fn client_ip(
    peer: Option<std::net::IpAddr>,
    forwarded_for: Option<&[u8]>,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let peer = peer.map(canonical_ip)?;
    let is_trusted = |ip: &std::net::IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(list) = forwarded_for.and_then(|v| std::str::from_utf8(v).ok()) else {
        return Some(peer);
    };
    let mut nearest = peer;
    for hop in list.rsplit(',') {
        match hop.trim().parse::<std::net::IpAddr>().map(canonical_ip) {
            Ok(ip) if is_trusted(&ip) => nearest = ip,
            Ok(ip) => return Some(ip),
            // A hop that is not an address (garbage, or a port): stop at what is known.
            Err(_) => return Some(nearest),
        }
    }
    Some(nearest)
}

/// A CIDR (`10.0.0.0/8`, `2001:db8::/32`) or a single address (`203.0.113.7`).
pub fn parse_cidr(text: &str) -> Result<ipnet::IpNet, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<ipnet::IpNet>() {
        return Ok(n.trunc());
    }
    t.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("`{t}` is not an IPv4 or IPv6 address or CIDR"))
}

impl ApiKey {
    /// The rate-limited subjects a call with this key counts against.
    pub fn rate_subjects(&self) -> Vec<(limits::Scope, i64, limits::Limits)> {
        let mut v = Vec::with_capacity(3);
        if !self.key_limits.is_unlimited() {
            v.push((limits::Scope::Key, self.id.0, self.key_limits));
        }
        if let (Some(u), false) = (self.user_id, self.user_limits.is_unlimited()) {
            v.push((limits::Scope::User, u.0, self.user_limits));
        }
        if !self.tenant_limits.is_unlimited() {
            v.push((limits::Scope::Tenant, self.tenant_id.0, self.tenant_limits));
        }
        v
    }
}

#[cfg(test)]
mod network_tests {
    use super::*;

    #[test]
    fn allow_lists_match_v4_v6_and_mapped_addresses() {
        let rule =
            NetworkRule::from_lists(Some(r#"["10.0.0.0/8","2001:db8::/32"]"#), None).unwrap();
        assert_eq!(rule.refuses(Some("10.1.2.3".parse().unwrap())), None);
        assert_eq!(rule.refuses(Some("::ffff:10.1.2.3".parse().unwrap())), None);
        assert_eq!(rule.refuses(Some("2001:db8::1".parse().unwrap())), None);
        assert_eq!(
            rule.refuses(Some("192.168.1.1".parse().unwrap())),
            Some("key")
        );
        assert_eq!(rule.refuses(None), Some("key"));
        let both =
            NetworkRule::from_lists(Some(r#"["10.0.0.0/8"]"#), Some(r#"["10.9.0.0/16"]"#)).unwrap();
        assert_eq!(
            both.refuses(Some("10.1.0.1".parse().unwrap())),
            Some("tenant")
        );
        assert_eq!(both.refuses(Some("10.9.0.1".parse().unwrap())), None);
        assert!(NetworkRule::from_lists(None, Some("[]")).is_none());
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr("203.0.113.7").unwrap().to_string(),
            "203.0.113.7/32"
        );
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = vec![
            parse_cidr("127.0.0.1").unwrap(),
            parse_cidr("10.0.0.0/8").unwrap(),
        ];
        let peer = Some("127.0.0.1".parse().unwrap());
        let ip = |p, xff: &str| client_ip(p, Some(xff.as_bytes()), &trusted).map(|i| i.to_string());
        assert_eq!(ip(peer, "203.0.113.9").as_deref(), Some("203.0.113.9"));
        // Spoofed entries to the left of the nearest untrusted hop are ignored.
        assert_eq!(
            ip(peer, "1.1.1.1, 203.0.113.9, 10.0.0.5").as_deref(),
            Some("203.0.113.9")
        );
        assert_eq!(ip(peer, "junk").as_deref(), Some("127.0.0.1"));
        // An untrusted peer's header is ignored.
        assert_eq!(
            ip(Some("198.51.100.1".parse().unwrap()), "203.0.113.9").as_deref(),
            Some("198.51.100.1")
        );
        assert_eq!(
            client_ip(peer, Some(b"203.0.113.9"), &[])
                .map(|i| i.to_string())
                .as_deref(),
            Some("127.0.0.1")
        );
    }
}

impl ApiKey {
    pub fn may_use_channel(&self, channel: &str) -> bool {
        self.default_channel == channel || self.allowed_channels.iter().any(|c| c == channel)
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }
}

/// How often a tenant's quotas and budgets start again from zero (UTC calendar).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    /// Lifetime limits (the default).
    #[default]
    None,
    Day,
    Month,
}

impl QuotaPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaPeriod::None => "none",
            QuotaPeriod::Day => "day",
            QuotaPeriod::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<QuotaPeriod> {
        match s {
            "none" => Some(QuotaPeriod::None),
            "day" => Some(QuotaPeriod::Day),
            "month" => Some(QuotaPeriod::Month),
            _ => None,
        }
    }

    /// The period containing `ms` (Unix milliseconds): 0 for lifetime limits, otherwise a number
    /// that changes exactly when a new UTC day or month starts.
    pub fn index(self, ms: i64) -> i64 {
        let days = ms.div_euclid(86_400_000);
        match self {
            QuotaPeriod::None => 0,
            QuotaPeriod::Day => days + 1,
            QuotaPeriod::Month => {
                let (y, m) = civil_year_month(days);
                y * 12 + m
            }
        }
    }

    /// Start of the period containing `ms`, in Unix milliseconds (0 for lifetime limits).
    pub fn start_ms(self, ms: i64) -> i64 {
        let days = ms.div_euclid(86_400_000);
        match self {
            QuotaPeriod::None => 0,
            QuotaPeriod::Day => days * 86_400_000,
            QuotaPeriod::Month => {
                let (y, m) = civil_year_month(days);
                days_from_civil(y, m, 1) * 86_400_000
            }
        }
    }
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (proleptic Gregorian).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn civil_year_month(days: i64) -> (i64, i64) {
    let (y, m, _) = civil_from_days(days);
    (y, m)
}

/// Days from 1970-01-01 to year-month-day.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod period_tests {
    use super::QuotaPeriod;

    fn ms(y: i64, m: i64, d: i64, h: i64) -> i64 {
        (super::days_from_civil(y, m, d) * 24 + h) * 3_600_000
    }

    #[test]
    fn periods_turn_at_utc_day_and_month_starts() {
        // Leap day, year ends and a month of 31 days.
        let cases = [
            (ms(2024, 2, 29, 23), ms(2024, 3, 1, 0)),
            (ms(2025, 12, 31, 23), ms(2026, 1, 1, 0)),
            (ms(2026, 1, 31, 12), ms(2026, 2, 1, 0)),
        ];
        for (before, after) in cases {
            assert_ne!(
                QuotaPeriod::Month.index(before),
                QuotaPeriod::Month.index(after)
            );
            assert_eq!(QuotaPeriod::Month.start_ms(after), after);
            assert_ne!(
                QuotaPeriod::Day.index(before),
                QuotaPeriod::Day.index(after)
            );
            assert_eq!(
                QuotaPeriod::None.index(before),
                QuotaPeriod::None.index(after)
            );
        }
        assert_eq!(
            QuotaPeriod::Month.index(ms(2026, 11, 1, 0)),
            QuotaPeriod::Month.index(ms(2026, 11, 30, 23))
        );
        assert_eq!(
            QuotaPeriod::Month.start_ms(ms(2026, 11, 23, 20)),
            ms(2026, 11, 1, 0)
        );
        assert_eq!(
            QuotaPeriod::Day.start_ms(ms(2026, 11, 23, 20)),
            ms(2026, 11, 23, 0)
        );
        // 2026-11-23 is 20,780 days after 1970-01-01.
        assert_eq!(super::days_from_civil(2026, 11, 23), 20_780);
        assert_eq!(super::civil_year_month(20_780), (2026, 11));
    }
}
