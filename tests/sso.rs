#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Console single sign-on (issue 18) against a real OpenID provider: the certified
//! `oidc-provider` package from npm (tests/oidc/provider.mjs, installed by
//! scripts/install-clients), on a free port. The gateway discovers it, sends the browser there
//! with PKCE, state and nonce, exchanges the code and checks the ID token with the crate; the
//! provider's test switch makes it answer with a token for another audience, an expired one or
//! a bad signature. Each case goes through the console's own pages like a browser: start, the
//! provider's login form, the callback with the state cookie.

mod common;

use common::admin_call as api;
use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

const CLIENT_ID: &str = "tollgate-console";
const CLIENT_SECRET: &str = "s3cret-of-the-console-client";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real provider, from .clients/ (scripts/install-clients).
struct Provider {
    child: Child,
    issuer: String,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Provider {
    fn start(port: u16, redirect_uri: &str, kid: &str, id_token_claims: bool) -> Provider {
        let module = repo().join(".clients/node_modules/oidc-provider/package.json");
        assert!(
            module.exists(),
            "oidc-provider is not installed: run scripts/install-clients (scripts/test does)"
        );
        let local_node = repo().join(".clients/node_modules/.bin/node");
        let node = if local_node.exists() {
            local_node
        } else {
            PathBuf::from("node")
        };
        let dir = tempfile::tempdir().unwrap();
        let config = json!({
            "port": port,
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "redirect_uris": [redirect_uri],
            "kid": kid,
            "id_token_claims": id_token_claims,
            "accounts": [
                {"sub": "u-alice", "email": "alice@acme.example", "email_verified": true, "name": "Alice", "groups": ["llm-admins", "staff"]},
                {"sub": "u-bob", "email": "bob@acme.example", "email_verified": true, "name": "Bob", "groups": ["staff"]},
                {"sub": "u-carol", "email": "carol@acme.example", "email_verified": true, "name": "Carol", "groups": ["llm-users"]},
                {"sub": "u-dave", "email": "dave@elsewhere.example", "email_verified": true, "name": "Dave", "groups": ["llm-users"]},
                {"sub": "u-eve", "email": "eve@acme.example", "email_verified": true, "name": "Eve", "groups": ["llm-users"]},
                {"sub": "u-mallory", "email": "erin@acme.example", "email_verified": true, "name": "Not Erin", "groups": ["llm-users"]},
            ],
        });
        let path = dir.path().join("provider.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let mut child = Command::new(node)
            .arg(repo().join("tests/oidc/provider.mjs"))
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(line.trim())
            .unwrap_or_else(|e| panic!("the provider did not start: {e}: {line:?}"));
        Provider {
            child,
            issuer: ready["issuer"].as_str().unwrap().to_string(),
            port: ready["port"].as_u64().unwrap() as u16,
            _dir: dir,
        }
    }

    async fn mode(&self, mode: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}/__test/mode", self.issuer))
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A browser: cookies per host (path-blind, which is enough here), no automatic redirects.
struct Browser {
    http: reqwest::Client,
    jar: HashMap<String, HashMap<String, String>>,
}

struct Answer {
    status: u16,
    location: Option<String>,
    body: String,
}

impl Browser {
    fn new() -> Browser {
        Browser {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            jar: HashMap::new(),
        }
    }

    fn cookie(&self, host: &str, name: &str) -> Option<String> {
        self.jar.get(host).and_then(|c| c.get(name)).cloned()
    }

    async fn send(&mut self, method: &str, url: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let u = reqwest::Url::parse(url).unwrap();
        let host = format!("{}:{}", u.host_str().unwrap(), u.port().unwrap_or(80));
        let mut r = self.http.request(method.parse().unwrap(), url);
        if let Some(c) = self.jar.get(&host) {
            let header: Vec<String> = c.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if !header.is_empty() {
                r = r.header("cookie", header.join("; "));
            }
        }
        if let Some(f) = form {
            let body: String = form_urlencoded_pairs(f);
            r = r
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let resp = r.send().await.unwrap();
        for v in resp.headers().get_all("set-cookie") {
            let text = v.to_str().unwrap();
            let (pair, attrs) = text.split_once(';').unwrap_or((text, ""));
            let (k, val) = pair.split_once('=').unwrap();
            let jar = self.jar.entry(host.clone()).or_default();
            if attrs.to_ascii_lowercase().contains("max-age=0")
                || attrs.contains("expires=Thu, 01 Jan 1970")
            {
                jar.remove(k.trim());
            } else {
                jar.insert(k.trim().to_string(), val.trim().to_string());
            }
        }
        let status = resp.status().as_u16();
        let location = resp
            .headers()
            .get("location")
            .map(|l| u.join(l.to_str().unwrap()).unwrap().to_string());
        Answer {
            status,
            location,
            body: resp.text().await.unwrap_or_default(),
        }
    }

    async fn get(&mut self, url: &str) -> Answer {
        self.send("GET", url, None).await
    }
}

fn form_urlencoded_pairs(f: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    f.iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// What a sign-in through the console came to.
struct Outcome {
    /// The console's answer to the provider's redirect back (303 on success).
    status: u16,
    location: Option<String>,
    body: String,
    /// The callback URL the provider sent the browser to (for replay).
    callback: String,
    session: Option<String>,
}

/// A whole sign-in as a browser does it: console start page, the provider's login form with
/// `email`, and the callback to the console.
async fn sign_in(gw: &Gateway, b: &mut Browser, tenant: &str, email: &str) -> Outcome {
    let start = b
        .get(&gw.admin_url(&format!("/console/sso/start?tenant={tenant}")))
        .await;
    assert_eq!(start.status, 200, "{}", start.body);
    let href = start
        .body
        .split("id=\"sso-continue\" href=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("the start page links to the provider")
        .replace("&#x2f;", "/")
        .replace("&#x27;", "'")
        .replace("&quot;", "\"")
        .replace("&amp;", "&");
    assert!(start.body.contains("http-equiv=\"refresh\""));
    let mut a = b.get(&href).await;
    assert_eq!(a.status, 303, "{}", a.body);
    // The provider's login form.
    let interaction = a.location.clone().unwrap();
    assert!(interaction.contains("/interaction/"), "{interaction}");
    let form = b.get(&interaction).await;
    assert_eq!(form.status, 200);
    a = b
        .send(
            "POST",
            &format!("{interaction}/login"),
            Some(&[("email", email)]),
        )
        .await;
    // Through the provider's resume step, back to the console's callback.
    let mut hops = 0;
    while let Some(next) = a.location.clone() {
        if next.contains("/console/sso/callback") {
            break;
        }
        a = b.get(&next).await;
        hops += 1;
        assert!(hops < 5, "the provider kept redirecting: {next}");
    }
    let callback = a
        .location
        .clone()
        .expect("the provider sends the browser back");
    let done = b.get(&callback).await;
    Outcome {
        status: done.status,
        location: done.location,
        body: done.body,
        callback,
        session: b.cookie(&format!("127.0.0.1:{}", gw.admin_port), "tg_session"),
    }
}

fn sso_settings(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "allowed_domains": ["acme.example"],
        "role_map": {"llm-admins": "tenant_admin", "llm-users": "member"},
        "extra_scopes": ["groups"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_single_sign_on_against_a_real_openid_provider() {
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let redirect_uri = gw.admin_url("/console/sso/callback");
    // Scope claims only at userinfo first (the package's default, and the spec's).
    let mut idp = Provider::start(0, &redirect_uri, "key-1", false);

    // Settings: discovery must answer; the secret is never shown back.
    let (s, v) = api(
        &gw,
        "PUT",
        "/admin/tenants/acme/sso",
        ADMIN_TOKEN,
        Some(json!({"issuer": "http://127.0.0.1:1", "client_id": "x"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["error"]["param"], "issuer");
    let (s, v) = api(&gw, "PUT", "/admin/tenants/acme/sso", ADMIN_TOKEN, Some(json!({"issuer": "https://idp.example", "client_id": "x", "role_map": {"g": "operator"}}))).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("role_map")),
        "{v}"
    );
    let (s, v) = api(
        &gw,
        "PUT",
        "/admin/tenants/acme/sso",
        ADMIN_TOKEN,
        Some(sso_settings(&idp.issuer)),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["client_secret_set"], true);
    assert!(v.get("client_secret").is_none(), "{v}");
    assert_eq!(v["redirect_uri"], redirect_uri);
    assert!(!v.to_string().contains(CLIENT_SECRET));
    // A member of the tenant that exists before SSO (password), and one who is disabled.
    let carol = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "carol@acme.example", "name": "Carol", "role": "viewer"}),
        )
        .await;
    let carol_id = carol["user"]["id"].as_i64().unwrap();
    let carol_token = carol["token"].as_str().unwrap().to_string();
    let (s, _) = api(
        &gw,
        "PUT",
        "/admin/me/password",
        &carol_token,
        Some(json!({"current_password": "", "new_password": "carol's long password"})),
    )
    .await;
    assert!(s == 200 || s == 204);
    let eve = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "eve@acme.example", "name": "Eve", "role": "member"}),
        )
        .await;
    let eve_id = eve["user"]["id"].as_i64().unwrap();
    let (s, _) = api(
        &gw,
        "PATCH",
        &format!("/admin/users/{eve_id}"),
        ADMIN_TOKEN,
        Some(json!({"disabled": true})),
    )
    .await;
    assert_eq!(s, 200);
    // Erin exists and is linked to her own identity at the provider after her first sign-in;
    // here another subject ("u-mallory") claims her email: refused.
    let erin = gw
        .admin_post(
            "/admin/tenants/acme/users",
            json!({"email": "erin@acme.example", "name": "Erin", "role": "member"}),
        )
        .await;
    let erin_id = erin["user"]["id"].as_i64().unwrap();

    // Happy path: Alice has no account yet; her groups make her a tenant admin (JIT).
    let mut b = Browser::new();
    let o = sign_in(&gw, &mut b, "acme", "alice@acme.example").await;
    assert_eq!(o.status, 303, "{}", o.body);
    assert_eq!(
        o.location.as_deref(),
        Some(
            gw.admin_url(&format!("/console/t/{}", gw.tenant_id))
                .as_str()
        )
    );
    let session = o.session.clone().expect("a console session cookie");
    assert!(
        b.cookie(&format!("127.0.0.1:{}", gw.admin_port), "tg_sso")
            .is_none(),
        "the flow cookie is cleared"
    );
    let (s, me) = api(&gw, "GET", "/admin/me", &session, None).await;
    assert_eq!(s, 200, "{me}");
    assert_eq!(me["role"], "tenant_admin", "{me}");
    assert_eq!(me["user"]["email"], "alice@acme.example");
    assert_eq!(me["user"]["name"], "Alice");
    let page = b
        .get(&gw.admin_url(&format!("/console/t/{}", gw.tenant_id)))
        .await;
    assert_eq!(page.status, 200, "the console opens with the session");

    // The same answer of the provider, sent again: the state works once.
    let replay = b.get(&o.callback).await;
    assert_eq!(replay.status, 400, "{}", replay.body);
    // A callback this browser did not start (no state cookie): refused before the API.
    let mut other = Browser::new();
    let stolen = other.get(&o.callback).await;
    assert_eq!(stolen.status, 400);
    assert!(
        stolen.body.contains("did not start in this browser"),
        "{}",
        stolen.body
    );

    // Tokens the gateway must refuse, from the same provider.
    for (mode, expect) in [
        ("wrong_aud", "audience"),
        ("expired", "expired"),
        ("bad_signature", "signature"),
    ] {
        idp.mode(mode).await;
        let o = sign_in(&gw, &mut Browser::new(), "acme", "carol@acme.example").await;
        assert_eq!(o.status, 401, "{mode}: {}", o.body);
        assert!(o.session.is_none(), "{mode}");
        assert!(o.body.to_lowercase().contains(expect), "{mode}: {}", o.body);
    }
    idp.mode("normal").await;

    // An existing member signs in: matched by email, role follows the provider's groups.
    let o = sign_in(&gw, &mut Browser::new(), "acme", "carol@acme.example").await;
    assert_eq!(o.status, 303, "{}", o.body);
    let (_, me) = api(&gw, "GET", "/admin/me", o.session.as_deref().unwrap(), None).await;
    assert_eq!(
        (me["role"].as_str(), me["user"]["id"].as_i64()),
        (Some("member"), Some(carol_id))
    );

    // Policy refusals (403), and nobody created.
    let refusals = [
        ("bob@acme.example", "groups"),       // only unmapped groups
        ("eve@acme.example", "disabled"),     // disabled here, whatever the provider says
        ("dave@elsewhere.example", "domain"), // not an allowed domain
    ];
    for (email, why) in refusals {
        let o = sign_in(&gw, &mut Browser::new(), "acme", email).await;
        assert_eq!(o.status, 403, "{email}: {}", o.body);
        assert!(o.body.contains(why), "{email}: {}", o.body);
        assert!(o.session.is_none());
    }
    let users = gw.admin_get("/admin/tenants/acme/users").await;
    let emails: Vec<&str> = users["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert!(
        !emails.contains(&"bob@acme.example") && !emails.contains(&"dave@elsewhere.example"),
        "{emails:?}"
    );
    // Erin linked to another subject first (as if she had signed in before), then an
    // impostor subject with her email is refused.
    let store = tollgate::store::sqlite::Store::open(std::path::Path::new(&gw.db)).unwrap();
    assert!(store
        .link_sso_subject(tollgate::tenancy::UserId(erin_id), "u-erin")
        .unwrap());
    let o = sign_in(&gw, &mut Browser::new(), "acme", "erin@acme.example").await;
    assert_eq!(o.status, 403, "{}", o.body);
    assert!(o.body.contains("another identity"), "{}", o.body);

    // Passwords off for the tenant: Carol's password no longer opens a session; the operator
    // token still does.
    let (s, _) = api(&gw, "POST", "/admin/sessions", "", Some(json!({"tenant": "acme", "email": "carol@acme.example", "password": "carol's long password"}))).await;
    assert_eq!(s, 201, "passwords work while allowed");
    let mut off = sso_settings(&idp.issuer);
    off["password_sign_in"] = json!(false);
    off.as_object_mut().unwrap().remove("client_secret");
    let (s, v) = api(
        &gw,
        "PUT",
        "/admin/tenants/acme/sso",
        ADMIN_TOKEN,
        Some(off),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["client_secret_set"], true,
        "left out: the stored secret is kept"
    );
    let (s, v) = api(&gw, "POST", "/admin/sessions", "", Some(json!({"tenant": "acme", "email": "carol@acme.example", "password": "carol's long password"}))).await;
    assert_eq!(s, 403, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("single sign-on"));
    let (s, _) = api(
        &gw,
        "POST",
        "/admin/sessions",
        "",
        Some(json!({"operator_token": ADMIN_TOKEN})),
    )
    .await;
    assert_eq!(s, 201);

    // The provider rotates its signing key (restarted with a new one, claims in the ID token
    // this time): the gateway fetches the new keys on its own.
    let port = idp.port;
    idp.stop();
    let idp = Provider::start(port, &redirect_uri, "key-2", true);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let o = sign_in(&gw, &mut Browser::new(), "acme", "alice@acme.example").await;
    assert_eq!(o.status, 303, "after rotation: {}", o.body);

    // The trail has the sign-ins, successful and refused, with nothing secret.
    let trail = gw
        .admin_get("/admin/audit?action=sso/callback&limit=100")
        .await;
    let rows = trail["data"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["status"] == 201
                && r["actor"].as_str().unwrap().contains("alice@acme.example")),
        "{trail}"
    );
    assert!(rows.iter().any(|r| r["status"] == 403));
    assert!(rows.iter().any(|r| r["status"] == 401));
    let all = gw.admin_get("/admin/audit?limit=500").await.to_string();
    assert!(
        !all.contains(CLIENT_SECRET),
        "the client secret is never in the trail"
    );
    assert!(
        all.contains("/admin/tenants/{t}/sso"),
        "SSO settings changes are audited"
    );

    // Turned off: passwords work again, the start refuses.
    let (s, _) = api(&gw, "DELETE", "/admin/tenants/acme/sso", ADMIN_TOKEN, None).await;
    assert_eq!(s, 204);
    let (s, _) = api(&gw, "POST", "/admin/sessions", "", Some(json!({"tenant": "acme", "email": "carol@acme.example", "password": "carol's long password"}))).await;
    assert_eq!(s, 201);
    let (s, v) = api(
        &gw,
        "POST",
        "/admin/sso/start",
        "",
        Some(json!({"tenant": "acme"})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    // A tenant that does not exist answers the same (no tenant enumeration).
    let (s2, v2) = api(
        &gw,
        "POST",
        "/admin/sso/start",
        "",
        Some(json!({"tenant": "nope"})),
    )
    .await;
    assert_eq!(
        (s2, v2["error"]["param"].as_str()),
        (400, Some("tenant")),
        "{v2}"
    );
    drop(idp);
}

/// The Security page's three forms and a sign-in through the provider's own login page, in
/// Chromium (tests/console/sso_browser.py); screenshots to docs/console/.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_sign_on_and_the_security_page_in_a_real_browser() {
    let chromium = chromium();
    let m = mock().await;
    let gw = Gateway::start(&[Up::mock("a", &m)], "", "").await;
    let idp = Provider::start(0, &gw.admin_url("/console/sso/callback"), "key-1", false);
    let shots = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/console");
    std::fs::create_dir_all(shots).unwrap();
    let out = tokio::task::spawn_blocking({
        let console = format!("http://127.0.0.1:{}", gw.admin_port);
        let (tenant, issuer) = (gw.tenant_id.to_string(), idp.issuer.clone());
        move || {
            Command::new("python3")
                .arg("tests/console/sso_browser.py")
                .env("CONSOLE", console)
                .env("OPERATOR_TOKEN", ADMIN_TOKEN)
                .env("TENANT", tenant)
                .env("ISSUER", issuer)
                .env("CLIENT_ID", CLIENT_ID)
                .env("CLIENT_SECRET", CLIENT_SECRET)
                .env("SHOTS", shots)
                .env("CHROMIUM", chromium)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("sso browser test passed"),
        "browser test failed:\n{stdout}\n{stderr}\n--- gateway log ---\n{}",
        gw.log()
    );
    drop(idp);
}
