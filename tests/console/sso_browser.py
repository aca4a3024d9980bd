"""Single sign-on and the Security page in a real browser (Chromium from Debian, driven by
Playwright), against a real `tollgate run` and a real OpenID provider (tests/oidc/provider.mjs,
the npm `oidc-provider` package). Run by tests/sso.rs, which passes: CONSOLE, OPERATOR_TOKEN,
TENANT (its id), ISSUER, CLIENT_ID, CLIENT_SECRET, SHOTS (where screenshots go), CHROMIUM.

The tenant's admin work is done on the console's own forms (no API calls except to check what
they saved); then a new browser signs in through the identity provider's login page. Any
browser console error on a console page fails the run."""
import json, os, urllib.request
from playwright.sync_api import sync_playwright

CONSOLE = os.environ["CONSOLE"]
OPERATOR = os.environ["OPERATOR_TOKEN"]
TENANT = os.environ["TENANT"]
ISSUER = os.environ["ISSUER"]
SHOTS = os.environ["SHOTS"]
errors = []


def api(method, path, body=None):
    req = urllib.request.Request(CONSOLE + path, method=method,
                                 headers={"Authorization": f"Bearer {OPERATOR}", "Content-Type": "application/json"},
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def watch(page):
    # Only the console's own pages count (the provider's test pages have no favicon).
    def console(m):
        if m.type == "error" and page.url.startswith(CONSOLE):
            errors.append(f"console {m.type}: {m.text} @ {page.url}")
    page.on("console", console)
    page.on("pageerror", lambda e: errors.append(f"page error: {e} @ {page.url}"))


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def submit(page, selector):
    with page.expect_navigation():
        page.click(selector)


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
        new = lambda: browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-US")

        # --- The operator (standing in for the tenant admin) sets the three policies.
        ctx = new()
        op = ctx.new_page()
        watch(op)
        op.goto(CONSOLE + "/console/login")
        op.click("details summary")
        op.fill("input[name=operator_token]", OPERATOR)
        submit(op, "#operator-sign-in")
        op.goto(f"{CONSOLE}/console/t/{TENANT}/security")
        check(op.locator("#sso-status").inner_text().strip() == "Off", "SSO starts off")
        redirect_uri = op.locator("#sso-redirect-uri").inner_text().strip()
        check(redirect_uri == CONSOLE + "/console/sso/callback", f"redirect URI shown: {redirect_uri}")
        op.fill("#sso-settings input[name=issuer]", ISSUER)
        op.fill("#sso-settings input[name=client_id]", os.environ["CLIENT_ID"])
        op.fill("#sso-settings input[name=client_secret]", os.environ["CLIENT_SECRET"])
        op.fill("#sso-settings input[name=allowed_domains]", "acme.example")
        op.fill("#sso-settings input[name=extra_scopes]", "groups")
        op.fill("#sso-settings textarea[name=role_map]", "llm-admins = tenant_admin\nllm-users = member\n")
        op.uncheck("#sso-settings input[name=password_sign_in]")
        submit(op, "#sso-save")
        check(op.locator("#sso-status").inner_text().strip() == "On", "SSO is on after saving")
        saved = api("GET", f"/admin/tenants/{TENANT}/sso")
        check(saved["issuer"] == ISSUER and saved["client_secret_set"] and not saved["password_sign_in"], saved)
        check(saved["role_map"] == {"llm-admins": "tenant_admin", "llm-users": "member"}, saved)
        check(os.environ["CLIENT_SECRET"] not in op.content(), "the secret is not shown back")

        op.fill("#network-form textarea[name=allowed_cidrs]", "10.0.0.0/8\n127.0.0.1\n2001:db8::/32")
        submit(op, "#network-save")
        net = api("GET", f"/admin/tenants/{TENANT}/network")
        check(len(net["allowed_cidrs"]) == 3, net)

        op.select_option("#detector-email", "redact")
        op.select_option("#detector-secrets", "block")
        op.fill("#guardrails-form input[name=kw_name_0]", "codenames")
        op.fill("#guardrails-form textarea[name=kw_words_0]", "Project Falcon\nBluebird")
        submit(op, "#guardrails-save")
        g = api("GET", f"/admin/tenants/{TENANT}/guardrails")
        check(g["detectors"] == {"email": "redact", "secrets": "block"}, g)
        check(g["keywords"] == [{"name": "codenames", "words": ["Project Falcon", "Bluebird"], "action": "block"}], g)
        op.screenshot(path=os.path.join(SHOTS, "security-en.png"), full_page=True)
        submit(op, "nav.lang a[href^='/console/lang/zh']")
        op.screenshot(path=os.path.join(SHOTS, "security-zh.png"), full_page=True)
        # Back to an open network for the rest of the run.
        api("PUT", f"/admin/tenants/{TENANT}/network", {"allowed_cidrs": []})

        # --- A member signs in through the identity provider, in a fresh browser.
        ctx2 = new()
        me = ctx2.new_page()
        watch(me)
        me.goto(CONSOLE + "/console/login")
        me.fill("#sso-form input[name=tenant]", "acme")
        me.click("#sso-sign-in")
        me.wait_for_url("**/interaction/**")
        check(me.url.startswith(ISSUER), f"at the provider: {me.url}")
        me.fill("input[name=email]", "alice@acme.example")
        me.click("button[type=submit]")
        me.wait_for_url(f"**/console/t/{TENANT}")
        check("alice@acme.example" in me.content(), "signed in as Alice")
        me.screenshot(path=os.path.join(SHOTS, "sso-signed-in.png"), full_page=True)
        cookies = {c["name"]: c for c in ctx2.cookies()}
        check("tg_session" in cookies and cookies["tg_session"]["httpOnly"], cookies.keys())
        check("tg_sso" not in cookies, "the flow cookie is gone after the sign-in")
        # Passwords are off for the tenant: the password form is refused with a clear message.
        ctx3 = new()
        pw = ctx3.new_page()
        watch(pw)
        pw.goto(CONSOLE + "/console/login")
        pw.fill("form[action='/console/login'] input[name=tenant]", "acme")
        pw.fill("input[name=email]", "alice@acme.example")
        pw.fill("input[name=password]", "any password at all")
        submit(pw, "#sign-in")
        check("single sign-on" in pw.locator(".flash.err").inner_text(), "passwords are refused")
        errors[:] = [e for e in errors if "status of 403" not in e]
        browser.close()
    if errors:
        raise AssertionError("browser errors:\n" + "\n".join(errors))
    print("sso browser test passed")


if __name__ == "__main__":
    main()
