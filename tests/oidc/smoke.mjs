// End-to-end check of tests/oidc/provider.mjs, independent of the Rust tests.
//
// Usage: .clients/node_modules/.bin/node tests/oidc/smoke.mjs
// Starts the provider twice (id_token_claims true, then false), runs the authorization code
// flow with PKCE like a browser plus a relying party would, then checks every test mode.
// Exits non-zero on the first failure.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import assert from 'node:assert/strict';

const jose = await import(new URL('../../.clients/node_modules/jose/dist/webapi/index.js', import.meta.url).href);

const CLIENT_ID = 'tollgate-console';
const CLIENT_SECRET = 'a secret/with+odd=chars';
const REDIRECT_URI = 'http://127.0.0.1:1234/console/sso/callback';
const ALICE = { sub: 'u1', email: 'alice@acme.example', email_verified: true, name: 'Alice', groups: ['llm-admins'] };
const BOB = { sub: 'u2', email: 'bob@acme.example', email_verified: false, name: 'Bob', groups: [] };

// Starts provider.mjs with a config; resolves to { issuer, stop }.
async function startProvider(idTokenClaims) {
  const dir = mkdtempSync(join(tmpdir(), 'oidc-smoke-'));
  const configPath = join(dir, 'config.json');
  writeFileSync(configPath, JSON.stringify({
    port: 0,
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    redirect_uris: [REDIRECT_URI],
    accounts: [ALICE, BOB],
    kid: 'key-1',
    id_token_claims: idTokenClaims,
  }));
  const child = spawn(process.execPath, [new URL('./provider.mjs', import.meta.url).pathname, configPath], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const firstLine = await new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`provider exited with ${code}`)));
  });
  const { issuer, port } = JSON.parse(firstLine);
  assert.equal(issuer, `http://127.0.0.1:${port}`);
  const stop = () => new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.kill('SIGTERM');
  });
  return { issuer, stop };
}

// fetch with a hand-kept cookie jar and no automatic redirects.
function browser() {
  const jar = new Map();
  return async function request(url, init = {}) {
    const headers = new Headers(init.headers);
    if (jar.size) headers.set('cookie', [...jar].map(([k, v]) => `${k}=${v}`).join('; '));
    const res = await fetch(url, { ...init, headers, redirect: 'manual' });
    for (const cookie of res.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1));
    }
    return res;
  };
}

// Follows redirects (GET) until a Location points at the client's redirect_uri, or a page answers.
async function follow(request, res, base) {
  while (res.status >= 300 && res.status < 400) {
    const location = new URL(res.headers.get('location'), base).href;
    if (location.startsWith(REDIRECT_URI)) return new URL(location);
    res = await request(location);
  }
  return res;
}

function decode(jwt) {
  const [h, p] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url')),
    payload: JSON.parse(Buffer.from(p, 'base64url')),
  };
}

// One full login as `email`; returns { callback, tokens, nonce } (tokens only when a code came
// back). clientAuth: 'basic' (client_secret_basic) or 'post' (client_secret_post).
async function login(discovery, email, clientAuth = 'basic') {
  const request = browser();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const state = randomBytes(8).toString('hex');
  const nonce = randomBytes(8).toString('hex');

  const auth = new URL(discovery.authorization_endpoint);
  auth.search = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: REDIRECT_URI,
    scope: 'openid email profile groups',
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  const page = await follow(request, await request(auth), auth);
  assert.equal(page.status, 200, 'expected the login page');
  const html = await page.text();
  const action = /<form method="post" action="([^"]+)"><input name="email"/.exec(html)?.[1];
  assert.ok(action, `no login form in: ${html}`);

  const posted = await request(new URL(action, discovery.issuer), {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ email }),
  });
  const callback = await follow(request, posted, discovery.issuer);
  assert.ok(callback instanceof URL, `expected a redirect to the client, got ${callback.status}`);
  assert.equal(callback.searchParams.get('state'), state);
  assert.equal(callback.searchParams.get('iss'), discovery.issuer);
  const code = callback.searchParams.get('code');
  if (!code) return { callback };

  // The relying party's side: code -> tokens with the client secret and the PKCE verifier.
  // (client_secret_basic wants id and secret form-urlencoded before base64, RFC 6749 2.3.1.)
  const headers = { 'content-type': 'application/x-www-form-urlencoded' };
  const form = { grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier };
  if (clientAuth === 'basic') {
    const basic = Buffer.from(`${encodeURIComponent(CLIENT_ID)}:${encodeURIComponent(CLIENT_SECRET)}`).toString('base64');
    headers.authorization = `Basic ${basic}`;
  } else {
    Object.assign(form, { client_id: CLIENT_ID, client_secret: CLIENT_SECRET });
  }
  const tokenRes = await fetch(discovery.token_endpoint, { method: 'POST', headers, body: new URLSearchParams(form) });
  const tokens = await tokenRes.json();
  assert.equal(tokenRes.status, 200, JSON.stringify(tokens));
  return { callback, tokens, nonce };
}

async function setMode(issuer, mode) {
  const res = await fetch(`${issuer}/__test/mode`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ mode }),
  });
  assert.equal(res.status, 204);
}

async function run(idTokenClaims) {
  const { issuer, stop } = await startProvider(idTokenClaims);
  try {
    const discovery = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    assert.equal(discovery.issuer, issuer);
    const jwks = jose.createLocalJWKSet(await (await fetch(discovery.jwks_uri)).json());
    console.log(`[id_token_claims=${idTokenClaims}] issuer ${issuer}, discovery ok`);

    // Normal login.
    const { tokens, nonce } = await login(discovery, ALICE.email);
    const { payload, protectedHeader } = await jose.jwtVerify(tokens.id_token, jwks, { issuer, audience: CLIENT_ID });
    assert.equal(protectedHeader.kid, 'key-1');
    assert.equal(protectedHeader.alg, 'RS256');
    assert.equal(payload.sub, ALICE.sub);
    assert.equal(payload.nonce, nonce);
    assert.ok(payload.exp - payload.iat === 600, `id token ttl ${payload.exp - payload.iat}`);
    if (idTokenClaims) {
      assert.equal(payload.email, ALICE.email);
      assert.equal(payload.email_verified, true);
      assert.equal(payload.name, ALICE.name);
      assert.deepEqual(payload.groups, ALICE.groups);
    } else {
      assert.equal(payload.email, undefined);
      assert.equal(payload.groups, undefined);
    }
    console.log(`[id_token_claims=${idTokenClaims}] login ok, id_token claims: ${Object.keys(payload).join(',')}`);

    const userinfo = await (await fetch(discovery.userinfo_endpoint, {
      headers: { authorization: `Bearer ${tokens.access_token}` },
    })).json();
    assert.deepEqual(userinfo, { sub: ALICE.sub, email: ALICE.email, email_verified: true, name: ALICE.name, groups: ALICE.groups });
    console.log(`[id_token_claims=${idTokenClaims}] userinfo ok: ${JSON.stringify(userinfo)}`);

    // Unknown account: back to the client with access_denied.
    const denied = await login(discovery, 'mallory@acme.example');
    assert.equal(denied.callback.searchParams.get('error'), 'access_denied');
    console.log(`[id_token_claims=${idTokenClaims}] unknown email -> access_denied ok`);

    // Test modes.
    await setMode(issuer, 'wrong_aud');
    let t = (await login(discovery, BOB.email)).tokens.id_token;
    assert.equal(decode(t).header.kid, 'key-1');
    assert.equal((await jose.compactVerify(t, jwks)).protectedHeader.kid, 'key-1'); // good signature
    assert.equal(decode(t).payload.aud, 'another-client');
    await assert.rejects(jose.jwtVerify(t, jwks, { issuer, audience: CLIENT_ID }), { code: 'ERR_JWT_CLAIM_VALIDATION_FAILED' });
    // The mode persists until changed.
    t = (await login(discovery, BOB.email)).tokens.id_token;
    assert.equal(decode(t).payload.aud, 'another-client');
    console.log(`[id_token_claims=${idTokenClaims}] wrong_aud ok`);

    await setMode(issuer, 'expired');
    t = (await login(discovery, BOB.email)).tokens.id_token;
    await jose.compactVerify(t, jwks);
    const now = Math.floor(Date.now() / 1000);
    const { exp, iat } = decode(t).payload;
    assert.ok(Math.abs(exp - (now - 600)) <= 5 && Math.abs(iat - (now - 1200)) <= 5, `exp ${exp} iat ${iat} now ${now}`);
    await assert.rejects(jose.jwtVerify(t, jwks, { issuer, audience: CLIENT_ID }), { code: 'ERR_JWT_EXPIRED' });
    console.log(`[id_token_claims=${idTokenClaims}] expired ok`);

    await setMode(issuer, 'bad_signature');
    t = (await login(discovery, BOB.email)).tokens.id_token;
    assert.equal(decode(t).payload.aud, CLIENT_ID);
    await assert.rejects(jose.compactVerify(t, jwks), { code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });
    console.log(`[id_token_claims=${idTokenClaims}] bad_signature ok`);

    await setMode(issuer, 'normal');
    t = (await login(discovery, BOB.email, 'post')).tokens.id_token;
    await jose.jwtVerify(t, jwks, { issuer, audience: CLIENT_ID });
    console.log(`[id_token_claims=${idTokenClaims}] back to normal ok (client_secret_post)`);

    const bad = await fetch(`${issuer}/__test/mode`, { method: 'POST', body: '{"mode":"nonsense"}' });
    assert.equal(bad.status, 400);
  } finally {
    const { code, signal } = await stop();
    console.log(`[id_token_claims=${idTokenClaims}] provider stopped on SIGTERM: exit code ${code}, signal ${signal}`);
    assert.equal(code, 0);
  }
}

await run(true);
await run(false);
console.log('smoke: all ok');
