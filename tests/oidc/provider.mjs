// A real OpenID Connect provider for tollgate's integration tests (test fixture only).
//
// It wraps the certified `oidc-provider` package (panva, pinned in scripts/install-clients and
// installed into .clients/) and adds what a test needs and a browser would otherwise do:
//   - a login form that is posted by the test instead of a human, which logs the account in
//     AND grants consent in the same step, so the browser goes straight back to the client;
//   - a control endpoint, POST /__test/mode, that makes the token endpoint hand out broken ID
//     tokens (wrong audience, expired, bad signature) for negative tests.
//
// Usage: node tests/oidc/provider.mjs CONFIG.json   (node >= 22, e.g. .clients/node_modules/.bin/node)
// When ready it prints one JSON line to stdout: {"issuer":"http://127.0.0.1:<port>","port":<port>}
// Everything else (notices, errors) goes to stderr. See tests/oidc/README.md for the config.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';

// oidc-provider prints its notices with console.info, which would go to stdout and mix with the
// ready line the tests read; send all console output to stderr instead.
console.log = console.error;
console.info = console.error;

// The packages live in .clients/node_modules (not next to this script), so import them by path.
const { default: Provider } = await import(
  new URL('../../.clients/node_modules/oidc-provider/lib/index.js', import.meta.url).href
);
const jose = await import(new URL('../../.clients/node_modules/jose/dist/webapi/index.js', import.meta.url).href);

// ---------------------------------------------------------------------------------------------
// Configuration

if (process.argv.length !== 3) {
  console.error('usage: node tests/oidc/provider.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
for (const field of ['client_id', 'client_secret', 'redirect_uris', 'accounts', 'kid']) {
  if (config[field] === undefined) {
    console.error(`provider.mjs: config field "${field}" is missing`);
    process.exit(2);
  }
}
const port = Number(config.port ?? 0);
const idTokenClaims = config.id_token_claims === true;
const idTokenTTL = Number(config.id_token_ttl ?? 600);

// The accounts, by subject and by (lower-cased) email.
const accountsBySub = new Map(config.accounts.map((account) => [account.sub, account]));
const accountsByEmail = new Map(config.accounts.map((account) => [String(account.email).toLowerCase(), account]));

// A fresh RS256 signing key at every start, with the configured key id.
const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(privateKey)), kid: config.kid, alg: 'RS256', use: 'sig' };

// ---------------------------------------------------------------------------------------------
// The HTTP server. It listens first so that port 0 can be resolved into the real port, which
// is part of the issuer; the provider is attached as the request handler right after.

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
// No trailing slash: this exact string is the `iss` of every token and the discovery `issuer`.
const issuer = `http://127.0.0.1:${actualPort}`;

// ---------------------------------------------------------------------------------------------
// The provider

const SCOPES = ['openid', 'email', 'profile', 'groups'];

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client_id,
    client_secret: config.client_secret,
    redirect_uris: config.redirect_uris,
    response_types: ['code'],
    grant_types: ['authorization_code'],
    // client_secret_post is accepted too: oidc-provider treats the two secret methods alike.
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
  responseTypes: ['code'],
  // PKCE on every authorization request (oidc-provider only supports S256).
  pkce: { required: () => true },

  scopes: SCOPES,
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  // false: claims requested by scope go into the ID token as well as userinfo. The default
  // (true) only puts them in the ID token when no access token is issued, i.e. never here.
  conformIdTokenClaims: !idTokenClaims,

  jwks: { keys: [signingJwk] },
  // Signed cookies with a per-run secret. oidc-provider only marks cookies Secure when the
  // request itself came over https, so plain http on 127.0.0.1 works without further settings.
  cookies: { keys: [randomBytes(32).toString('hex')] },

  features: {
    devInteractions: { enabled: false }, // our own interaction routes below
    userinfo: { enabled: true },
  },
  interactions: {
    url: (ctx, interaction) => `/interaction/${interaction.uid}`,
  },

  async findAccount(ctx, sub) {
    const account = accountsBySub.get(sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      // oidc-provider keeps only the claims the granted scopes and claims ask for.
      async claims() {
        return {
          sub,
          email: account.email,
          email_verified: account.email_verified,
          name: account.name,
          groups: account.groups,
        };
      },
    };
  },

  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    IdToken: idTokenTTL,
    Interaction: 3600,
    Session: 3600,
    Grant: 3600,
  },

  // A plain error page (the default one pulls a web font).
  async renderError(ctx, out) {
    ctx.type = 'html';
    ctx.body = `<!DOCTYPE html><title>oidc error</title><pre>${escapeHtml(JSON.stringify(out, null, 2))}</pre>`;
  },
});

provider.on('server_error', (ctx, err) => console.error('provider.mjs: server_error:', err));
provider.on('authorization.error', (ctx, err) => console.error('provider.mjs: authorization.error:', err.message, err.error_description ?? ''));
provider.on('grant.error', (ctx, err) => console.error('provider.mjs: grant.error:', err.message, err.error_description ?? ''));
provider.on('userinfo.error', (ctx, err) => console.error('provider.mjs: userinfo.error:', err.message, err.error_description ?? ''));

// ---------------------------------------------------------------------------------------------
// Test control: how the token endpoint alters the ID tokens it hands out.

const MODES = new Set(['normal', 'wrong_aud', 'expired', 'bad_signature']);
let mode = 'normal';

const signingKey = await jose.importJWK(signingJwk, 'RS256');

// Returns the ID token altered according to the current mode.
async function alterIdToken(idToken) {
  const [headerB64, payloadB64, signatureB64] = idToken.split('.');
  if (mode === 'bad_signature') {
    // Flip the last two bytes of the signature: same token, signature no longer valid.
    const signature = Buffer.from(signatureB64, 'base64url');
    signature[signature.length - 1] ^= 0xff;
    signature[signature.length - 2] ^= 0xff;
    return `${headerB64}.${payloadB64}.${signature.toString('base64url')}`;
  }

  const header = JSON.parse(Buffer.from(headerB64, 'base64url').toString('utf8'));
  const payload = JSON.parse(Buffer.from(payloadB64, 'base64url').toString('utf8'));
  const now = Math.floor(Date.now() / 1000);
  if (mode === 'wrong_aud') {
    payload.aud = 'another-client';
  } else if (mode === 'expired') {
    payload.iat = now - 1200;
    payload.exp = now - 600;
  }
  // Re-signed with the provider's real key and the same header (alg, kid), so only the claim
  // that was changed makes the token wrong.
  return new jose.CompactSign(Buffer.from(JSON.stringify(payload)))
    .setProtectedHeader(header)
    .sign(signingKey);
}

// Around the token endpoint: alter the id_token of successful answers when a mode is set.
provider.use(async (ctx, next) => {
  await next();
  if (mode === 'normal' || ctx.oidc?.route !== 'token' || ctx.status !== 200) return;
  if (ctx.body && typeof ctx.body.id_token === 'string') {
    ctx.body.id_token = await alterIdToken(ctx.body.id_token);
  }
});

// POST /__test/mode {"mode": "..."} -> 204
provider.use(async (ctx, next) => {
  if (ctx.path !== '/__test/mode') return next();
  if (ctx.method !== 'POST') {
    ctx.status = 405;
    return undefined;
  }
  let requested;
  try {
    requested = JSON.parse(await readBody(ctx.req)).mode;
  } catch {
    requested = undefined;
  }
  if (!MODES.has(requested)) {
    ctx.status = 400;
    ctx.body = { error: `mode must be one of ${[...MODES].join(', ')}` };
    return undefined;
  }
  mode = requested;
  console.error(`provider.mjs: test mode set to ${mode}`);
  ctx.status = 204;
  return undefined;
});

// ---------------------------------------------------------------------------------------------
// Interactions (login + consent), driven by the test instead of a human.

provider.use(async (ctx, next) => {
  const match = /^\/interaction\/([^/]+)(\/login)?$/.exec(ctx.path);
  if (!match) return next();
  ctx.set('cache-control', 'no-store');
  try {
    return await interaction(ctx, match[2] !== undefined);
  } catch (err) {
    // E.g. no interaction cookie, or the interaction expired: a plain-text 400.
    if (!err.expose) throw err;
    console.error(`provider.mjs: interaction: ${err.error}: ${err.error_description}`);
    ctx.status = err.status;
    ctx.body = `${err.error}: ${err.error_description}`;
    return undefined;
  }
});

// The two interaction routes; isLogin: the path ends in /login.
async function interaction(ctx, isLogin) {
  // GET /interaction/:uid -> the login form.
  if (ctx.method === 'GET' && !isLogin) {
    const { uid } = await provider.interactionDetails(ctx.req, ctx.res);
    ctx.type = 'html';
    ctx.body = '<!DOCTYPE html><title>Sign in</title>'
      + `<form method="post" action="/interaction/${escapeHtml(uid)}/login">`
      + '<input name="email" type="email"><button type="submit">Sign in</button></form>';
    return undefined;
  }

  // POST /interaction/:uid/login (email=...) -> log in and consent, back to the client.
  if (ctx.method === 'POST' && isLogin) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const email = new URLSearchParams(await readBody(ctx.req)).get('email') ?? '';
    const account = accountsByEmail.get(email.toLowerCase());

    let result;
    if (!account) {
      result = { error: 'access_denied', error_description: 'unknown account' };
    } else {
      // Grant everything that was asked for: the OIDC scopes, and the claims requested one by
      // one with the `claims` parameter (if any).
      const { params } = details;
      const grant = new provider.Grant({ accountId: account.sub, clientId: params.client_id });
      const scopes = String(params.scope ?? '').split(' ').filter((scope) => SCOPES.includes(scope));
      grant.addOIDCScope(scopes.join(' '));
      if (params.claims) {
        const { userinfo = {}, id_token: idToken = {} } = JSON.parse(params.claims);
        grant.addOIDCClaims([...new Set([...Object.keys(userinfo), ...Object.keys(idToken)])]);
      }
      const grantId = await grant.save();
      result = { login: { accountId: account.sub }, consent: { grantId } };
    }

    // Answers 303 to the authorization endpoint, which then redirects to the client. It writes
    // the answer itself, so Koa must not respond again.
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: false });
    ctx.respond = false;
    return undefined;
  }

  ctx.status = 405;
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Start, and stop cleanly on SIGTERM / SIGINT.

provider.on('error', (err) => console.error('provider.mjs:', err));
server.on('request', provider.callback());
process.stdout.write(`${JSON.stringify({ issuer, port: actualPort })}\n`);

function shutdown(signal) {
  console.error(`provider.mjs: ${signal}, shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // Should the close hang, do not outlive the test.
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

// ---------------------------------------------------------------------------------------------
// Helpers

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}
