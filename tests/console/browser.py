"""The console in a real browser (Chromium from Debian, driven by Playwright), against a real
`tollgate run` with the mock vendor and a local SMTP sink. Run by tests/console.rs, which
passes: CONSOLE (http://host:port), GATEWAY (data plane), OPERATOR_TOKEN, MAIL_DIR, SHOTS (where
screenshots go), CHROMIUM (the browser binary).

Any browser console error or uncaught page error fails the run."""
import csv, email, io, json, os, re, sys, time, urllib.request, urllib.error
from decimal import Decimal
from email import policy
from playwright.sync_api import sync_playwright

CONSOLE = os.environ["CONSOLE"]
GATEWAY = os.environ["GATEWAY"]
OPERATOR = os.environ["OPERATOR_TOKEN"]
MAIL_DIR = os.environ["MAIL_DIR"]
SHOTS = os.environ["SHOTS"]
errors = []


def api(method, path, token=OPERATOR, body=None):
    req = urllib.request.Request(CONSOLE + path, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                                 data=json.dumps(body).encode() if body is not None else None)
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")


def watch(page):
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text} @ {page.url}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e} @ {page.url}"))


class expected_refusals:
    """Within it, the browser's "Failed to load resource: ... status of 4xx" lines are expected:
    the step answers a page with a refusal status on purpose (a wrong password, a used code)."""

    def __enter__(self):
        self.n = len(errors)

    def __exit__(self, *exc):
        errors[self.n:] = [e for e in errors[self.n:]
                           if "Failed to load resource: the server responded with a status of 4" not in e]
        return False


def shot(page, name):
    page.screenshot(path=os.path.join(SHOTS, f"{name}.png"), full_page=True)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def mail_to(address, kind="invite", timeout=20):
    """The newest message to `address` in the sink with a console `kind` link, and that link."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for name in sorted(os.listdir(MAIL_DIR), reverse=True):
            msg = email.message_from_bytes(open(os.path.join(MAIL_DIR, name), "rb").read(), policy=policy.default)
            if address in str(msg["To"]):
                body = msg.get_body(preferencelist=("plain",)).get_content()
                link = re.search(r"https?://\S+/console/" + kind + r"/\S+", body)
                if link:
                    return msg, link.group(0)
        time.sleep(0.2)
    raise AssertionError(f"no mail to {address} arrived")


def sign_in(page, tenant, mail, password):
    page.goto(CONSOLE + "/console/login")
    page.fill("input[name=tenant]", tenant)
    page.fill("input[name=email]", mail)
    page.fill("input[name=password]", password)
    submit(page, "#sign-in")


def accept(page, link, name, password):
    page.goto(link)
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", password)
    page.fill("input[name=confirm]", password)
    submit(page, "#accept")


def chat(key, text="hi", max_tokens=20):
    """One chat completion on the data plane with `key`: its HTTP status."""
    req = urllib.request.Request(GATEWAY + "/v1/chat/completions", method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                                 data=json.dumps({"model": "gpt-4o-mini", "max_tokens": max_tokens,
                                                  "messages": [{"role": "user", "content": text}]}).encode())
    try:
        with urllib.request.urlopen(req) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def usage_total(page, url, timeout=20):
    """The usage page's request count, once it shows a call (the recorder writes within a second)."""
    deadline = time.time() + timeout
    while True:
        page.goto(url)
        n = page.locator("#total-requests").inner_text().strip()
        if n != "0" or time.time() > deadline:
            return n
        time.sleep(0.5)


def submit(page, selector):
    """Clicks a submit button and waits for the page it leads to (not the one still shown)."""
    with page.expect_navigation():
        page.click(selector)


def csrf_of(page):
    return page.locator("input[name=_csrf]").first.get_attribute("value")


def set_lang(page, lang):
    submit(page, f"nav.lang a[href^='/console/lang/{lang}']")


def main():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=os.environ["CHROMIUM"], args=["--no-sandbox"])
        new = lambda: browser.new_context(viewport={"width": 1280, "height": 860}, timezone_id="Asia/Shanghai", locale="en-US")

        # --- Operator: sign in, create two tenants, top one up.
        op_ctx = new()
        op = op_ctx.new_page()
        watch(op)
        op.goto(CONSOLE + "/console")
        check("/console/login" in op.url, f"not sent to sign in: {op.url}")
        shot(op, "login-en")
        op.click("details summary")
        op.fill("input[name=operator_token]", "wrong-token")
        with expected_refusals():
            submit(op, "#operator-sign-in")
        check(op.locator(".flash.err").count() == 1, "a wrong operator token was not refused")
        op.click("details summary")
        op.fill("input[name=operator_token]", OPERATOR)
        submit(op, "#operator-sign-in")
        op.wait_for_url("**/console/op/tenants")
        for name in ["Browser Co", "Other Co"]:
            op.fill("#tenant-form input[name=name]", name)
            submit(op, "#tenant-form button")
        tenants = {t["name"]: t["id"] for t in api("GET", "/admin/tenants")["data"]}
        tid, other = tenants["Browser Co"], tenants["Other Co"]
        row = op.locator(f"#tenant-{tid}")
        row.locator("input[name=amount_rmb]").fill("500")
        row.locator("input[name=note]").fill("first top-up")
        with op.expect_navigation():
            row.locator("button").click()
        check(op.locator(".flash.ok").count() == 1, "top-up not confirmed")
        balance = api("GET", f"/admin/tenants/{tid}/balance")
        check(Decimal(balance["available"]) > 0, f"top-up did not arrive: {balance}")
        shot(op, "op-tenants-en")

        # The operator invites the tenant's admin: the invitation is emailed.
        op.goto(f"{CONSOLE}/console/t/{tid}/members")
        op.fill("#invite-form input[name=email]", "admin@browser.test")
        op.select_option("#invite-form select[name=role]", "tenant_admin")
        submit(op, "#invite-form button")
        _, admin_link = mail_to("admin@browser.test")

        # --- Tenant admin: accept the emailed invitation, set a password.
        ad_ctx = new()
        ad_ctx.grant_permissions(["clipboard-read", "clipboard-write"])
        ad = ad_ctx.new_page()
        watch(ad)
        ad.goto(admin_link)
        shot(ad, "invite-en")
        check("Browser Co" in ad.locator("#invite-facts").inner_text(), "the invitation does not say for which tenant")
        accept(ad, admin_link, "Ada Admin", "correct horse battery")
        check(ad.url.rstrip("/").endswith(f"/console/t/{tid}"), f"admin not on the overview: {ad.url}")
        # The link used once opens a page that says so, without a form.
        used_ctx = new()
        used = used_ctx.new_page()
        watch(used)
        used.goto(admin_link)
        check(used.locator("#accept").count() == 0 and used.locator(".flash.err").count() == 1,
              "a used invitation still offers its form")
        used_ctx.close()

        # Invite a member and a finance viewer; create a department with a budget.
        for mail, role in [("member@browser.test", "member"), ("viewer@browser.test", "viewer")]:
            ad.goto(f"{CONSOLE}/console/t/{tid}/members")
            ad.fill("#invite-form input[name=email]", mail)
            ad.select_option("#invite-form select[name=role]", role)
            submit(ad, "#invite-form button")
            check(ad.locator("#invite-link").count() == 1, "the invitation link is not shown")
        # The tenant's only admin cannot disable themselves by mistake.
        ad.goto(f"{CONSOLE}/console/t/{tid}/members")
        me_row = ad.locator("tr", has_text="admin@browser.test").first
        me_row.locator("input[name=disabled]").check()
        with ad.expect_navigation():
            me_row.locator("button", has_text="Save").click()
        check("only admin" in ad.locator(".flash.err").inner_text(), "the only admin could disable themselves")
        # Quotas and budgets count per month from now on.
        ad.goto(f"{CONSOLE}/console/t/{tid}/members")
        ad.select_option("#period-form select[name=period]", "month")
        submit(ad, "#period-form button")
        check(api("GET", f"/admin/tenants/{tid}")["quota_period"] == "month", "the quota period was not saved")
        ad.goto(f"{CONSOLE}/console/t/{tid}/departments")
        ad.fill("#department-form input[name=name]", "Research")
        ad.fill("#department-form input[name=budget]", "100")
        submit(ad, "#department-form button")
        check(ad.locator("#department-form ~ table td", has_text="Research").count() >= 1, "department not listed")
        group_row = ad.locator("tr[id^=group-]").first
        group_row.locator("input[name=budget]").fill("150")
        with ad.expect_navigation():
            group_row.locator("button").click()
        check("150.00" in ad.locator("tr[id^=group-]").first.inner_text(), "the budget was not changed")

        # Create a key; the secret is shown once and copies to the clipboard.
        ad.goto(f"{CONSOLE}/console/t/{tid}/keys")
        ad.click("#create-key summary")
        ad.fill("#create-key input[name=name]", "ci-key")
        ad.fill("#create-key input[name=quota]", "50")
        # A mistake is explained and nothing typed is lost.
        ad.fill("#create-key input[name=allowed_models]", "no-such-model")
        submit(ad, "#create-key-submit")
        check(ad.locator(".flash.err").count() == 1, "an unknown model was not refused")
        check(ad.locator("#create-key input[name=name]").input_value() == "ci-key"
              and ad.locator("#create-key input[name=quota]").input_value() == "50",
              "the key form lost what was typed")
        ad.fill("#create-key input[name=allowed_models]", "")
        submit(ad, "#create-key-submit")
        secret = ad.locator("#new-secret").inner_text().strip()
        check(secret.startswith("tg-"), f"no secret shown: {secret!r}")
        ad.click("#copy-secret")
        copied = ad.evaluate("navigator.clipboard.readText()")
        check(copied == secret, "the copy button did not copy the secret")
        # The change answered with a redirect: reloading shows the page alone, creates nothing.
        ad.reload()
        check(secret not in ad.content(), "the secret is shown again")
        keys_named = [k for k in api("GET", f"/admin/keys?tenant={tid}")["data"] if k["name"] == "ci-key"]
        check(len(keys_named) == 1, f"reloading made {len(keys_named)} keys")

        # The key works on the data plane, and the call shows in the overview and usage.
        check(chat(secret, "hello from the browser test") == 200, "data-plane call failed")
        check(usage_total(ad, f"{CONSOLE}/console/t/{tid}/usage") == "1", "the call is not in the usage page")
        check(ad.locator("#usage-table td", has_text="gpt-4o-mini").count() == 1, "the model is not in the usage table")
        ad.goto(f"{CONSOLE}/console/t/{tid}")
        check(ad.locator("#spend-today").inner_text().strip() not in ("0.00", "—"), "today's spend is empty")
        check(ad.locator("svg rect.bar").count() >= 1, "no chart bars")

        # Rotating the key (asked to confirm first): a new secret shown once, the old one refused.
        ad.goto(f"{CONSOLE}/console/t/{tid}/keys")
        ad.once("dialog", lambda d: d.accept())
        with ad.expect_navigation():
            ad.locator("tr", has_text="ci-key").locator("button", has_text="Rotate").click()
        rotated = ad.locator("#new-secret").inner_text().strip()
        check(rotated.startswith("tg-") and rotated != secret, "no new secret after rotating")

        check(chat(secret) == 401 and chat(rotated) == 200, "rotation did not replace the secret")
        secret = rotated
        # A form's address opened as a page answers like a missing page (not a blank one).
        with expected_refusals():
            ad.goto(f"{CONSOLE}/console/t/{tid}/keys/1/rotate")
        check(ad.locator("h1").count() == 1 and ad.locator("nav.lang").count() == 1, "a form address opened as a page is blank")
        # Dates that are not a range are said so, on the page with its filters.
        ad.goto(f"{CONSOLE}/console/t/{tid}/usage?from=2026-12-09&to=2026-12-01")
        check(ad.locator(".flash.err").count() == 1 and ad.locator("#usage-filters").count() == 1,
              "a backwards date range is not explained on the usage page")

        # A code from the operator is redeemed by the tenant admin.
        op.goto(CONSOLE + "/console/op/codes")
        op.fill("#codes-form input[name=credits]", "25")
        op.fill("#codes-form input[name=count]", "2")
        op.fill("#codes-form input[name=batch]", "browser")
        submit(op, "#codes-form button")
        code = op.locator("#new-codes").inner_text().split()[0]
        shot(op, "op-codes-en")
        ad.goto(f"{CONSOLE}/console/t/{tid}/redeem")
        ad.fill("#redeem-form input[name=code]", code)
        submit(ad, "#redeem-form button")
        check(ad.locator("#redeemed").count() == 1, "the code was not redeemed")
        ad.goto(f"{CONSOLE}/console/t/{tid}/redeem")
        ad.fill("#redeem-form input[name=code]", code)
        with expected_refusals():
            submit(ad, "#redeem-form button")
        check(ad.locator(".flash.err").count() == 1, "a used code was accepted twice")

        # Top up online: the console sends the admin to (mock) Stripe's page, the payment's signed
        # webhook credits the order once, and the admin comes back to the order, paid.
        before = Decimal(api("GET", f"/admin/tenants/{tid}/balance")["credited"])
        ad.goto(f"{CONSOLE}/console/t/{tid}/topup")
        ad.fill("#topup-form input[name=amount_rmb]", "20")
        submit(ad, "#pay-stripe")
        check("/c/pay/cs_test_" in ad.url, f"not sent to the payment page: {ad.url}")
        submit(ad, "#stripe-pay")
        check(f"/console/t/{tid}/topup" in ad.url and ad.locator("#returned").count() == 1,
              f"not back on the top-up page: {ad.url}")
        check("Paid" in ad.locator("#orders-table tbody tr").first.inner_text(), "the order is not paid")
        after = Decimal(api("GET", f"/admin/tenants/{tid}/balance")["credited"])
        check(after - before == Decimal(20), f"credited {after - before} for a 20 RMB payment")
        op.goto(CONSOLE + "/console/op/orders")
        check(op.locator("#mismatches").inner_text().strip() == "0", "the reconciliation shows mismatches")
        check(op.locator("td", has_text="¥20").count() >= 1, "the operator does not see the order")
        check("stripe" in op.locator("#providers-table").inner_text(), "no per-provider reconciliation")
        # The operator refunds 5 RMB of it: debited, shown on the order.
        refund = op.locator("form[id^=refund-]").first
        refund.locator("input[name=amount_rmb]").fill("5")
        refund.locator("input[name=reason]").fill("browser test")
        submit(op, "form[id^=refund-] button")
        check(op.locator(".flash.ok").count() == 1, "the refund was not made")
        check(op.locator("td", has_text="¥5").count() >= 1, "the refunded amount is not shown")
        refunded = Decimal(api("GET", f"/admin/tenants/{tid}/balance")["credited"])
        check(after - refunded == Decimal(5), f"the refund debited {after - refunded}")

        # Alerts: the tenant admin sets thresholds and addresses; the audit trail shows it.
        ad.goto(f"{CONSOLE}/console/t/{tid}/alerts")
        ad.fill("#alerts-form input[name=balance_below]", "a lot")
        ad.fill("#alerts-form input[name=emails]", "finance@acme.example")
        submit(ad, "#alerts-save")
        check("Balance below" in ad.locator(".flash.err").inner_text()
              and ad.locator("#alerts-form input[name=emails]").input_value() == "finance@acme.example",
              "a bad alert amount is not named, or the form lost what was typed")
        ad.fill("#alerts-form input[name=balance_below]", "100")
        ad.fill("#alerts-form input[name=quota_percents]", "80, 100")
        ad.fill("#alerts-form input[name=emails]", "finance@acme.example")
        submit(ad, "#alerts-save")
        check(ad.locator("#alerts-form input[name=quota_percents]").input_value() == "80, 100",
              "the alert settings were not saved")
        shot(ad, "tenant-alerts-en")
        ad.goto(f"{CONSOLE}/console/t/{tid}/audit")
        check(ad.locator("#audit-table td", has_text="Changed the alerts").count() >= 1, "the audit action has no readable name")
        check(ad.locator("#audit-table td code", has_text="PUT /admin/tenants/{t}/alerts").count() >= 1,
              "the alert settings change is not in the audit trail")
        check("finance@acme.example" in ad.locator("#audit-table").inner_text() or
              ad.locator("#audit-table details").count() >= 1, "the audit entries have no detail")
        shot(ad, "tenant-audit-en")
        op.goto(CONSOLE + "/console/op/audit?action=refunds")
        check(op.locator("#audit-table td code", has_text="POST /admin/orders/{id}/refunds").count() == 1,
              "the refund is not in the operator's audit trail")
        shot(op, "op-audit-en")

        # CSV downloads match the API's totals.
        ad.goto(f"{CONSOLE}/console/t/{tid}/usage")
        with ad.expect_download() as d:
            ad.click("#usage-csv")
        rows = list(csv.DictReader(io.StringIO(open(d.value.path(), encoding="utf-8").read())))
        csv_credits = sum(Decimal(r["credits"]) for r in rows)
        csv_requests = sum(int(r["requests"]) for r in rows)
        total = api("GET", f"/admin/tenants/{tid}/analytics")["data"][0]
        check(csv_requests == total["requests"] and csv_credits == Decimal(total["credits"]),
              f"usage CSV {csv_requests}/{csv_credits} vs API {total}")
        ad.goto(f"{CONSOLE}/console/t/{tid}/records")
        with ad.expect_download() as d:
            ad.click("#records-csv")
        lines = list(csv.reader(io.StringIO(open(d.value.path(), encoding="utf-8").read())))
        header, last = lines[0], lines[-1]
        running = Decimal(last[header.index("running_balance_credits")])
        bal = api("GET", f"/admin/tenants/{tid}/balance")
        check(running == Decimal(bal["credited"]) - Decimal(bal["charged"]),
              f"statement CSV ends at {running}, balance {bal}")

        # Screenshots of every tenant page in both languages.
        pages = ["", "/members", "/departments", "/keys", "/usage", "/records", "/topup", "/redeem", "/alerts",
                 "/audit", "/security", "/prices", "/routing"]
        for lang in ["en", "zh"]:
            ad.goto(f"{CONSOLE}/console/t/{tid}")
            set_lang(ad, lang)
            for pth in pages:
                ad.goto(f"{CONSOLE}/console/t/{tid}{pth}")
                shot(ad, f"tenant{pth.replace('/', '-') or '-overview'}-{lang}")
            ad.goto(CONSOLE + "/console/account")
            shot(ad, f"account-{lang}")
        ad.goto(f"{CONSOLE}/console/t/{tid}")
        check("概览" in ad.content(), "the Chinese overview has no 概览")
        set_lang(ad, "en")
        check("Overview" in ad.content(), "switching back to English failed")

        # Another tenant's ids in URLs answer like missing pages.
        missing = ad_ctx.request.get(f"{CONSOLE}/console/t/999999/keys")
        foreign = ad_ctx.request.get(f"{CONSOLE}/console/t/{other}/keys")
        check(missing.status == 404 and foreign.status == 404, f"{missing.status} {foreign.status}")
        with expected_refusals():
            ad.goto(f"{CONSOLE}/console/t/{other}/usage")
            h1_foreign = ad.locator("h1").inner_text()
            ad.goto(f"{CONSOLE}/console/t/999999/usage")
        check(ad.locator("h1").inner_text() == h1_foreign, "a foreign tenant looks different from a missing one")
        check(ad_ctx.request.get(f"{CONSOLE}/console/op/tenants").status == 404, "operator pages open to a tenant admin")
        by_name = ad_ctx.request.get(f"{CONSOLE}/console/t/Browser%20Co/keys")
        check(by_name.status == 200 and "ci-key" in by_name.text(), f"the tenant by its name answered {by_name.status}")

        # --- Finance viewer: read-only. No create button; a forged POST is refused.
        _, viewer_link = mail_to("viewer@browser.test")
        # The invitation page in Chinese (a browser asking for Chinese; opening it uses nothing).
        zh_ctx = browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        zh = zh_ctx.new_page()
        watch(zh)
        zh.goto(viewer_link)
        check("设置密码" in zh.content() or "接受" in zh.content(), "the invitation page is not in Chinese")
        shot(zh, "invite-zh")
        vw_ctx = new()
        vw = vw_ctx.new_page()
        watch(vw)
        accept(vw, viewer_link, "Vic Viewer", "viewer password 1")
        vw.goto(f"{CONSOLE}/console/t/{tid}/keys")
        check(vw.locator("#create-key").count() == 0, "a viewer sees the create-key form")
        check(vw.locator("button", has_text="Revoke").count() == 0, "a viewer sees revoke buttons")
        token = csrf_of(vw)
        forged = vw_ctx.request.post(f"{CONSOLE}/console/t/{tid}/keys",
                                     form={"_csrf": token, "name": "sneaky", "default_channel": "main"})
        check(forged.status == 403, f"a viewer's key creation answered {forged.status}")
        check(all(k["name"] != "sneaky" for k in api("GET", f"/admin/keys?tenant={tid}")["data"]), "the viewer created a key")
        vw.goto(f"{CONSOLE}/console/t/{tid}/records")
        check(vw.locator("#records-table tbody tr").count() >= 2, "the viewer cannot read the records")
        money = vw.locator("#money-table").inner_text()
        check("first top-up" in money and "¥" in money, f"the money-in table lacks the operator's top-up: {money}")
        for pth in ["/security", "/redeem", "/alerts", "/members", "/departments"]:
            vw.goto(f"{CONSOLE}/console/t/{tid}{pth}")
            check(vw.locator("main button[type=submit]").count() == 0, f"a viewer sees a save button on {pth}")
        # Without the session's CSRF token, a form is refused even with the cookie.
        no_csrf = vw_ctx.request.post(f"{CONSOLE}/console/account", form={"current_password": "x", "new_password": "y" * 12, "confirm": "y" * 12})
        check(no_csrf.status == 403, f"a form without CSRF answered {no_csrf.status}")

        # A form posted from another site is refused, sign-in included (no login CSRF).
        evil = vw_ctx.request.post(f"{CONSOLE}/console/login", headers={"Origin": "https://evil.example"},
                                   form={"tenant": "Browser Co", "email": "viewer@browser.test", "password": "viewer password 1"},
                                   max_redirects=0)
        check(evil.status == 403, f"a cross-site sign-in answered {evil.status}")

        # --- Member: sees their own usage only, not the members list.
        _, member_link = mail_to("member@browser.test")
        mb_ctx = new()
        mb = mb_ctx.new_page()
        watch(mb)
        accept(mb, member_link, "Mo Member", "member password 1")
        mb.goto(f"{CONSOLE}/console/t/{tid}/usage")
        check(mb.locator("#total-requests").inner_text().strip() == "0", "a member sees another member's usage")
        mb.goto(f"{CONSOLE}/console/t/{tid}")
        check("My quota" in mb.locator(".tiles").first.inner_text(), "the member's overview has no quota")
        shot(mb, "member-overview-en")
        # The member makes a key of their own: only their keys are listed, the key's calls are
        # theirs, and the tenant admin sees both members' calls.
        mb.goto(f"{CONSOLE}/console/t/{tid}/keys")
        mb.click("#create-key summary")
        check(mb.locator("#create-key select[name=user_id]").count() == 0, "a member can pick another key owner")
        mb.fill("#create-key input[name=name]", "mo-key")
        submit(mb, "#create-key-submit")
        member_secret = mb.locator("#new-secret").inner_text().strip()
        check("ci-key" not in mb.locator("table").inner_text(), "a member sees another's key")
        check("mo-key" in mb.locator("table").inner_text(), "the member's key is not listed")
        check(chat(member_secret, "hello from a member", 10) == 200, "the member's key failed on the data plane")
        check(usage_total(mb, f"{CONSOLE}/console/t/{tid}/usage") == "1", "the member does not see their own call")
        ad.goto(f"{CONSOLE}/console/t/{tid}/usage?group_by=user")
        everyone = api("GET", f"/admin/tenants/{tid}/analytics")["data"][0]["requests"]
        check(everyone == 3 and ad.locator("#total-requests").inner_text().strip() == "3",
              f"the admin does not see every member's calls ({everyone} in the API)")
        check(ad.locator("#usage-table td", has_text="member@browser.test").count() == 1, "no row for the member")
        shot(mb, "member-usage-en")
        check(mb_ctx.request.get(f"{CONSOLE}/console/t/{tid}/members").status in (403, 404), "a member lists members")
        check(mb_ctx.request.get(f"{CONSOLE}/console/t/{tid}/records").status in (403, 404), "a member reads the tenant's records")

        # --- Sign-out ends the session; wrong passwords lock the account.
        submit(mb, "button.link")
        check("/console/login" in mb.url, "sign-out did not go to the login page")
        check(mb_ctx.request.get(f"{CONSOLE}/console/t/{tid}/usage", max_redirects=0).status == 303, "the session survived sign-out")
        with expected_refusals():
            for _ in range(5):
                sign_in(mb, "Browser Co", "member@browser.test", "not the password")
            sign_in(mb, "Browser Co", "member@browser.test", "member password 1")
        check("/console/login" in mb.url and "locked" in mb.content(), "five wrong passwords did not lock the account")
        ad.goto(f"{CONSOLE}/console/t/{tid}/members")
        check(ad.locator("tr", has_text="member@browser.test").locator(".locked").count() == 1,
              "the admin does not see that the member's sign-in is locked")
        # Forgot password: the emailed link sets a new one (and lifts the lock).
        mb.goto(CONSOLE + "/console/login")
        with mb.expect_navigation():
            mb.click("#forgot")
        mb.fill("input[name=tenant]", "Browser Co")
        mb.fill("input[name=email]", "member@browser.test")
        submit(mb, "#send-reset")
        check(mb.locator("#reset-sent").count() == 1, "no confirmation after asking for a reset")
        _, reset_link = mail_to("member@browser.test", kind="reset")
        shot(mb, "reset-en")
        zh.goto(reset_link)
        shot(zh, "reset-zh")
        mb.goto(reset_link)
        mb.fill("input[name=password]", "a brand new password")
        mb.fill("input[name=confirm]", "a brand new password")
        submit(mb, "#set-password")
        check(mb.url.rstrip("/").endswith(f"/console/t/{tid}"), f"not signed in after the reset: {mb.url}")
        # Used once, the link opens a page that says so, with no password form.
        mb.goto(reset_link)
        check(mb.locator(".flash.err").count() == 1 and mb.locator("#set-password").count() == 0,
              "a used reset link still offers its form")
        # And set a password through it, from the form kept in an old tab, is refused.
        with expected_refusals():
            refused = mb_ctx.request.post(reset_link, form={"password": "another new password",
                                                           "confirm": "another new password"})
        check(refused.status in (200, 400) and "flash err" in refused.text(), "a reset link worked twice")
        # A tenant admin makes a reset link for a member (emailed too).
        ad.goto(f"{CONSOLE}/console/t/{tid}/members")
        with ad.expect_navigation():
            ad.locator("tr", has_text="member@browser.test").locator("button", has_text="Reset password").click()
        check(ad.locator("#reset-link").count() == 1, "the admin's reset link is not shown")

        # --- The operator reloads the configuration: a new generation, loaded just now.
        op.goto(CONSOLE + "/console/op/health")
        gen = api("GET", "/admin/config/status")["generation"]
        submit(op, "#reload")
        check(op.locator(".flash.ok").count() == 1, "the reload was not confirmed")
        check(api("GET", "/admin/config/status")["generation"] == gen + 1, "the reload made no new generation")
        check(op.locator("#config-loaded").count() == 1, "no load time on the health page")

        # --- Operator pages, screenshots in both languages.
        for lang in ["en", "zh"]:
            op.goto(CONSOLE + "/console/op/tenants")
            set_lang(op, lang)
            for pth in ["tenants", "codes", "promos", "orders", "health", "audit"]:
                op.goto(f"{CONSOLE}/console/op/{pth}")
                shot(op, f"op-{pth}-{lang}")
        login_ctx = browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN")
        lp = login_ctx.new_page()
        watch(lp)
        lp.goto(CONSOLE + "/console/login")
        check("登录" in lp.content(), "a Chinese browser does not get the Chinese login page")
        shot(lp, "login-zh")
        sign_in(lp, "Browser Co", "nobody@browser.test", "not a password")
        check("不正确" in lp.locator(".flash.err").inner_text(), "a refused sign-in is not said in Chinese")
        browser.close()
    if errors:
        raise AssertionError("browser errors:\n" + "\n".join(errors))
    print("console browser test passed")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:
        print(f"FAILED: {e}\n" + "\n".join(errors), file=sys.stderr)
        raise
