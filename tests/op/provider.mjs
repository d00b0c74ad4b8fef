// Portcullis test OpenID Provider.
//
// A real OpenID Provider (the `oidc-provider` npm package, pinned in
// package.json) that the Rust integration tests start as
//
//     node tests/op/provider.mjs
//
// and configure through environment variables (see README.md next to this
// file). It prints exactly one line, `READY http://127.0.0.1:PORT`, to stdout
// once it is listening. Everything else it prints goes to stderr, and only a
// few lines: oidc-provider's own start-up warnings, plus per-request debug
// lines when OP_DEBUG=1. (Node writes to pipes synchronously on Linux, so a
// chatty stderr that the test harness never drains could block the process.)
//
// In front of the provider sit a few test-only control endpoints under
// /__test/ (stats, runtime config, counter reset) and a token-endpoint hook
// that counts requests and can delay or fail them on demand.
//
// Everything lives in memory (oidc-provider's default MemoryAdapter): a
// restart forgets all sessions, grants and tokens.

import { generateKeyPairSync, randomBytes } from 'node:crypto';

import Provider, { errors, interactionPolicy } from 'oidc-provider';

// ---------------------------------------------------------------------------
// Configuration from the environment
// ---------------------------------------------------------------------------

function fail(message) {
  process.stderr.write(`provider.mjs: ${message}\n`);
  process.exit(2);
}

function envList(name) {
  return (process.env[name] || '')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

function envInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 0) fail(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return n;
}

function envBool(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (raw === 'true' || raw === '1') return true;
  if (raw === 'false' || raw === '0') return false;
  return fail(`${name} must be "true" or "false", got ${JSON.stringify(raw)}`);
}

const PORT = envInt('PORT', undefined);
if (PORT === undefined || PORT === 0 || PORT > 65535) fail('PORT is required (1-65535)');

const HOST = '127.0.0.1'; // never bind anything but loopback
// ISSUER may name another loopback address in front of this one (the tests put a TCP
// forwarder there to make the OP unreachable on demand); it defaults to our own.
const ISSUER = process.env.ISSUER || `http://${HOST}:${PORT}`; // no trailing slash

const CLIENT_ID = process.env.CLIENT_ID || 'portcullis';
const CLIENT_SECRET = process.env.CLIENT_SECRET || 'portcullis-secret';
const REDIRECT_URIS = envList('REDIRECT_URIS');
const POST_LOGOUT_REDIRECT_URIS = envList('POST_LOGOUT_REDIRECT_URIS');
if (REDIRECT_URIS.length === 0) fail('REDIRECT_URIS is required (comma separated)');

const ACCESS_TOKEN_TTL = envInt('ACCESS_TOKEN_TTL', 5);
if (ACCESS_TOKEN_TTL === 0) fail('ACCESS_TOKEN_TTL must be at least 1 second');

// API clients (issue 9): a confidential client allowed only the client_credentials grant,
// and one resource server. A token requested with `resource=http://api.test` is a JWT access
// token (RFC 9068, `typ: at+jwt`, `aud: http://api.test`, signed with the OP's key); one
// requested without a resource is opaque (for the gateway's introspection mode). Both live
// API_TOKEN_TTL seconds (runtime knob `api_token_ttl`).
const API_CLIENT_ID = process.env.API_CLIENT_ID || 'api-client';
const API_CLIENT_SECRET = process.env.API_CLIENT_SECRET || 'api-client-secret';
const API_RESOURCE = process.env.API_RESOURCE || 'http://api.test';
const API_SCOPES = 'api:read api:write';

const DEBUG = envBool('OP_DEBUG', false);
const debug = DEBUG ? (...a) => process.stderr.write(`[op] ${a.join(' ')}\n`) : () => {};

// Behaviour the tests may change at runtime through POST /__test/config.
const runtime = {
  rotate_refresh_token: envBool('ROTATE_REFRESH_TOKEN', true),
  token_delay_ms: envInt('TOKEN_DELAY_MS', 0),
  token_fail: null, // null | "500" | "invalid_grant" | "timeout"
  api_token_ttl: envInt('API_TOKEN_TTL', 300), // seconds, client_credentials tokens
};
const TOKEN_FAIL_MODES = new Set([null, '500', 'invalid_grant', 'timeout', '502_after', '504_after']);

// Counters served by GET /__test/stats.
function freshStats() {
  return {
    // Every POST that reached the token endpoint, by grant_type.
    grants: { authorization_code: 0, refresh_token: 0 },
    // Same requests by `${grant_type}:${outcome}`; outcome is "ok" for HTTP
    // 200, else the `error` member of the JSON error body ("timeout" for
    // requests held open by token_fail=timeout). These three keys are always
    // present; other keys appear on first occurrence (absent means 0).
    grant_outcomes: {
      'authorization_code:ok': 0,
      'refresh_token:ok': 0,
      'refresh_token:invalid_grant': 0,
    },
    introspections: 0,
    revocations: 0,
  };
}
let stats = freshStats();

// Token-endpoint latency samples (milliseconds) of the requests that reached
// oidc-provider, by grant_type: from arrival at the control middleware until
// the response is written, minus the injected token_delay_ms. Requests
// answered by failure injection or by the auth-method check are not sampled.
// Summarised as `token_ms` / `token_ms_by_grant` in GET /__test/stats;
// POST /__test/reset clears them.
let tokenSamples = new Map();

function percentile(sorted, p) {
  // Nearest rank: the smallest sample with at least p% of the samples at or below it.
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

function latencySummary(samples) {
  if (samples.length === 0) return { count: 0, p50: null, p99: null, max: null };
  const sorted = Float64Array.from(samples).sort();
  const round = (ms) => Math.round(ms * 1000) / 1000;
  return {
    count: sorted.length,
    p50: round(percentile(sorted, 50)),
    p99: round(percentile(sorted, 99)),
    max: round(sorted[sorted.length - 1]),
  };
}

function statsBody() {
  const byGrant = {};
  for (const [grantType, samples] of tokenSamples) byGrant[grantType] = latencySummary(samples);
  return { ...stats, token_ms: latencySummary([...tokenSamples.values()].flat()), token_ms_by_grant: byGrant };
}

// ---------------------------------------------------------------------------
// Accounts: any login name is an account (devInteractions accepts any
// login/password); the claims are derived from it. A login name starting with
// "unverified" gets `email_verified: false` (the gateway's unverified-email rule).
// ---------------------------------------------------------------------------

function findAccount(_ctx, accountId) {
  return {
    accountId,
    async claims(_use, _scope, _claims, _rejected) {
      return {
        sub: accountId,
        email: `${accountId}@example.test`,
        email_verified: !accountId.startsWith('unverified'),
        name: accountId,
      };
    },
  };
}

// Scopes/claims granted to every client without asking (see loadExistingGrant).
const PREAPPROVED_SCOPE = 'openid offline_access profile email';
const PREAPPROVED_CLAIMS = ['sub', 'email', 'email_verified', 'name'];

// ---------------------------------------------------------------------------
// Keys. oidc-provider falls back to a well-known, published development key
// set (with a warning) when `jwks` is not configured; generate a fresh RS256
// key instead so the served JWKS is real and unique per run.
// ---------------------------------------------------------------------------

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-op-${randomBytes(6).toString('hex')}`,
  alg: 'RS256',
  use: 'sig',
};

// ---------------------------------------------------------------------------
// Clients. The same confidential client twice, once per client
// authentication method: a registration names one
// token_endpoint_auth_method, and the middleware below enforces it (see
// CLIENT AUTH QUIRK).
// ---------------------------------------------------------------------------

const baseClient = {
  client_secret: CLIENT_SECRET,
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  id_token_signed_response_alg: 'RS256',
};
const clients = [
  { ...baseClient, client_id: CLIENT_ID, token_endpoint_auth_method: 'client_secret_basic' },
  { ...baseClient, client_id: `${CLIENT_ID}-post`, token_endpoint_auth_method: 'client_secret_post' },
  {
    client_id: API_CLIENT_ID,
    client_secret: API_CLIENT_SECRET,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_basic',
    scope: API_SCOPES,
  },
];

// OFFLINE_ACCESS QUIRK. oidc-provider 9 silently removes `offline_access`
// from an authorization request's scope unless the request's `prompt`
// parameter contains `consent` (lib/actions/authorization/scopes.js; this
// happens before any grant is loaded, so pre-approving the grant does not
// help), and without offline_access no refresh token is issued. Other OPs
// (Keycloak, for one) issue one anyway, and the gateway sends
// `scope=openid offline_access profile email` without prompt=consent. So:
//   1. the control middleware adds `consent` to `prompt` on GET /auth when
//      the scope contains offline_access (unless prompt=none, which cannot be
//      combined with anything: there offline_access is dropped, as upstream);
//   2. the consent prompt's "consent_prompt" check (which forces the consent
//      screen whenever prompt=consent was requested) is removed, so consent is
//      only asked when scopes/claims are missing from the grant - never,
//      given loadExistingGrant below.
const policy = interactionPolicy.base();
policy.get('consent').checks.remove('consent_prompt');

function addConsentPromptForOfflineAccess(ctx) {
  const query = new URLSearchParams(ctx.querystring);
  const scopes = (query.get('scope') || '').split(' ');
  const prompts = (query.get('prompt') || '').split(' ').filter(Boolean);
  if (!scopes.includes('offline_access') || prompts.includes('consent') || prompts.includes('none')) return;
  if (query.getAll('prompt').length > 1) return; // let oidc-provider reject the duplicate
  query.set('prompt', [...prompts, 'consent'].join(' '));
  ctx.querystring = query.toString();
}

// Routes are spelled out (they are oidc-provider's defaults) because the
// control middleware below matches on them.
const ROUTES = {
  authorization: '/auth',
  token: '/token',
  introspection: '/token/introspection',
  revocation: '/token/revocation',
  end_session: '/session/end',
  jwks: '/jwks',
  userinfo: '/me',
};

// ---------------------------------------------------------------------------
// Provider
// ---------------------------------------------------------------------------

const provider = new Provider(ISSUER, {
  clients,
  findAccount,
  jwks: { keys: [signingKey] },
  // Cookie signing keys; without them oidc-provider warns and uses a default.
  cookies: { keys: [randomBytes(32).toString('hex')] },
  routes: ROUTES,
  responseTypes: ['code'],

  scopes: ['openid', 'offline_access', 'profile', 'email', ...API_SCOPES.split(' ')],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  // By default (conformIdTokenClaims: true) claims requested through scopes
  // only appear at userinfo when an access token is issued. Put them in the
  // ID token too so the gateway can read email/name without a userinfo call.
  conformIdTokenClaims: false,

  // PKCE on every authorization request. oidc-provider 9 only implements the
  // S256 method at all (code_challenge_method=plain is rejected), so
  // "required" is all there is to configure.
  pkce: { required: () => true },

  ttl: {
    AccessToken: ACCESS_TOKEN_TTL,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 24 * 60 * 60,
    ClientCredentials: () => runtime.api_token_ttl,
    Interaction: 60 * 60,
    Session: 24 * 60 * 60,
    Grant: 24 * 60 * 60,
  },

  // Refresh tokens are issued when the (remaining) scope contains
  // offline_access and the client may use the refresh_token grant (this is
  // oidc-provider's default policy, restated for clarity).
  issueRefreshToken: async (_ctx, client, code) => client.grantTypeAllowed('refresh_token')
    && code.scopes.has('offline_access'),

  // oidc-provider's default rotates confidential clients' refresh tokens only
  // once 70% of their lifetime has passed; the tests want an explicit switch.
  // A consumed (rotated) refresh token presented again is answered with
  // invalid_grant and revokes the whole grant (all its tokens): that is
  // oidc-provider's built-in replay detection, nothing to configure.
  rotateRefreshToken: () => runtime.rotate_refresh_token,

  // Pre-approve every grant so that no consent screen ever appears: the
  // grant returned here already holds every scope and claim the gateway asks
  // for, so the consent prompt's "op_scopes_missing"/"op_claims_missing"
  // checks never fire. (This alone is not enough for offline_access; see
  // OFFLINE_ACCESS QUIRK above.)
  //
  // A grant revoked by refresh-token replay or RFC 7009 revocation is gone
  // from the store while the browser session still points at its id, so a
  // fresh grant is made in that case too.
  async loadExistingGrant(ctx) {
    const { client, session, account } = ctx.oidc;
    const grantId = ctx.oidc.result?.consent?.grantId || session.grantIdFor(client.clientId);
    let grant = grantId ? await ctx.oidc.provider.Grant.find(grantId) : undefined;
    if (grant && grant.accountId !== account.accountId) grant = undefined;
    if (!grant) {
      grant = new ctx.oidc.provider.Grant({ clientId: client.clientId, accountId: account.accountId });
    }
    grant.addOIDCScope(PREAPPROVED_SCOPE);
    grant.addOIDCClaims(PREAPPROVED_CLAIMS);
    await grant.save();
    return grant;
  },

  interactions: { policy },

  // API clients' tokens carry an email and groups, so the gateway's identity headers for
  // bearer callers can be checked; user tokens are left as they were.
  extraTokenClaims: async (_ctx, token) => (token.kind === 'ClientCredentials'
    ? { email: `${token.clientId}@clients.example.test`, email_verified: true, groups: ['api-clients'] }
    : undefined),

  features: {
    // Built-in login page that accepts any login and password. It prints a
    // "development-only feature" warning at start-up; that is expected.
    devInteractions: { enabled: true },
    introspection: {
      enabled: true,
      // The default policy already lets an authenticated confidential client
      // introspect its own tokens; spelled out to silence the "you should
      // change this" notice and to make the rule visible.
      allowedPolicy: async (ctx, client, token) => client.clientAuthMethod !== 'none'
        || token.clientId === client.clientId,
    },
    revocation: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // No resource requested: none (opaque tokens, as before this feature was on).
      defaultResource: async (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resource) => {
        if (resource !== API_RESOURCE) throw new errors.InvalidTarget();
        return {
          scope: API_SCOPES,
          audience: API_RESOURCE,
          accessTokenFormat: 'jwt',
          accessTokenTTL: runtime.api_token_ttl,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
    rpInitiatedLogout: { enabled: true },
    userinfo: { enabled: true },
  },
});

provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`[op] server_error: ${err?.stack || err}\n`);
});
if (DEBUG) {
  provider.on('grant.error', (ctx, err) => debug('grant.error', ctx.oidc.params?.grant_type, err.message, err.error_description || ''));
  provider.on('grant.revoked', (_ctx, grantId) => debug('grant.revoked', grantId));
}

// ---------------------------------------------------------------------------
// Test control middleware. provider.use() inserts middleware *before*
// oidc-provider's own router, so this sees every request first.
// ---------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function readRawBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

function sendJson(ctx, status, body) {
  ctx.status = status;
  ctx.type = 'application/json';
  ctx.set('Cache-Control', 'no-store');
  ctx.body = JSON.stringify(body);
}

function errorOf(ctx) {
  let { body } = ctx;
  if (Buffer.isBuffer(body)) body = body.toString();
  if (typeof body === 'string') {
    try { body = JSON.parse(body); } catch { body = undefined; }
  }
  return body && typeof body === 'object' && typeof body.error === 'string' ? body.error : `http_${ctx.status}`;
}

function bump(map, key) {
  map[key] = (map[key] || 0) + 1;
}

async function controlEndpoints(ctx) {
  if (ctx.path === '/__test/stats' && ctx.method === 'GET') {
    return sendJson(ctx, 200, statsBody());
  }
  if (ctx.path === '/__test/config' && ctx.method === 'GET') {
    return sendJson(ctx, 200, runtime);
  }
  if (ctx.path === '/__test/config' && ctx.method === 'POST') {
    let patch;
    try {
      const raw = (await readRawBody(ctx.req)).toString();
      patch = raw ? JSON.parse(raw) : {};
    } catch (err) {
      return sendJson(ctx, 400, { error: 'invalid_request', error_description: `body must be JSON: ${err.message}` });
    }
    if (!patch || typeof patch !== 'object' || Array.isArray(patch)) {
      return sendJson(ctx, 400, { error: 'invalid_request', error_description: 'body must be a JSON object' });
    }
    // Validate everything before applying anything.
    const next = { ...runtime };
    for (const [key, value] of Object.entries(patch)) {
      if (key === 'rotate_refresh_token' && typeof value === 'boolean') {
        next.rotate_refresh_token = value;
      } else if (key === 'token_delay_ms' && Number.isInteger(value) && value >= 0) {
        next.token_delay_ms = value;
      } else if (key === 'api_token_ttl' && Number.isInteger(value) && value >= 1) {
        next.api_token_ttl = value;
      } else if (key === 'token_fail' && TOKEN_FAIL_MODES.has(value)) {
        next.token_fail = value;
      } else {
        return sendJson(ctx, 400, { error: 'invalid_request', error_description: `bad config member ${key}: ${JSON.stringify(value)}` });
      }
    }
    Object.assign(runtime, next);
    debug('config', JSON.stringify(runtime));
    return sendJson(ctx, 200, runtime);
  }
  if (ctx.path === '/__test/reset' && ctx.method === 'POST') {
    stats = freshStats();
    tokenSamples = new Map();
    return sendJson(ctx, 200, statsBody());
  }
  return sendJson(ctx, 404, { error: 'not_found', error_description: `no test endpoint ${ctx.method} ${ctx.path}` });
}

// Reads a form-encoded request body before oidc-provider does and hands the
// raw buffer over as `req.body`, which oidc-provider then parses instead of
// the (now consumed) stream. oidc-provider prints a one-time "already parsed
// request body detected" warning to stderr the first time; that is expected.
async function readForm(ctx) {
  const raw = await readRawBody(ctx.req);
  ctx.req.body = raw;
  return ctx.is('application/x-www-form-urlencoded') ? new URLSearchParams(raw.toString()) : new URLSearchParams();
}

// CLIENT AUTH QUIRK. oidc-provider treats client_secret_basic and
// client_secret_post as interchangeable: a client registered with either one
// is accepted with both (lib/shared/client_auth.js). The tests want to catch
// a gateway that uses the wrong method, so the registered method is enforced
// here, on every endpoint that authenticates clients, with the same 401 that
// oidc-provider gives for a failed client authentication.
const REGISTERED_AUTH_METHOD = new Map(clients.map((c) => [c.client_id, c.token_endpoint_auth_method]));

function wrongAuthMethod(ctx, form) {
  let method;
  let clientId;
  const authorization = ctx.get('authorization');
  if (/^basic /i.test(authorization)) {
    method = 'client_secret_basic';
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString();
    try {
      // RFC 6749 2.3.1: the client id is form-urlencoded before base64.
      clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, ' '));
    } catch { return undefined; } // malformed: let oidc-provider reject it
  } else if (form.has('client_secret')) {
    method = 'client_secret_post';
    clientId = form.get('client_id');
  } else {
    return undefined;
  }
  const registered = REGISTERED_AUTH_METHOD.get(clientId);
  if (!registered || registered === method) return undefined;
  return `client ${clientId} is registered with ${registered} but used ${method}`;
}

function rejectWrongAuthMethod(ctx, form) {
  const why = wrongAuthMethod(ctx, form);
  if (!why) return false;
  debug('invalid_client', why);
  sendJson(ctx, 401, { error: 'invalid_client', error_description: 'client authentication failed' });
  return true;
}

async function tokenEndpoint(ctx, next) {
  const arrived = process.hrtime.bigint();
  const form = await readForm(ctx);
  const grantType = form.get('grant_type') || 'none';
  bump(stats.grants, grantType);
  const record = (outcome) => {
    bump(stats.grant_outcomes, `${grantType}:${outcome}`);
    debug('token', grantType, outcome);
  };

  let delayedNs = 0n;
  if (runtime.token_delay_ms > 0) {
    const before = process.hrtime.bigint();
    await sleep(runtime.token_delay_ms);
    delayedNs = process.hrtime.bigint() - before;
  }

  // Failure injection: refresh_token grants only; the provider never sees
  // these requests, so no token is consumed.
  if (grantType === 'refresh_token' && runtime.token_fail) {
    switch (runtime.token_fail) {
      case '500':
        record('server_error');
        return sendJson(ctx, 500, { error: 'server_error', error_description: 'injected failure (token_fail=500)' });
      case 'invalid_grant':
        record('invalid_grant');
        return sendJson(ctx, 400, { error: 'invalid_grant', error_description: 'injected failure (token_fail=invalid_grant)' });
      case 'timeout':
        // Never answer: keep the connection open until the client gives up
        // (Node's server has no timeout for a fully received request whose
        // response is pending) or the process exits.
        record('timeout');
        await new Promise((resolve) => {
          if (ctx.req.socket.destroyed) resolve();
          else ctx.req.socket.once('close', resolve);
        });
        ctx.respond = false;
        return undefined;
      default:
        break;
    }
  }

  if (rejectWrongAuthMethod(ctx, form)) {
    record('invalid_client');
    return undefined;
  }

  // Sampled once the response is written (koa writes it after this middleware returns).
  ctx.res.once('finish', () => {
    const ms = Number(process.hrtime.bigint() - arrived - delayedNs) / 1e6;
    if (!tokenSamples.has(grantType)) tokenSamples.set(grantType, []);
    tokenSamples.get(grantType).push(ms);
  });
  await next();
  record(ctx.status === 200 ? 'ok' : errorOf(ctx));
  // "502_after" / "504_after": the OP processed the grant (a rotating refresh token is now
  // consumed), then a proxy in front of it lost the answer and said 502 / 504 instead.
  if (grantType === 'refresh_token' && (runtime.token_fail === '502_after' || runtime.token_fail === '504_after')) {
    ctx.status = runtime.token_fail === '502_after' ? 502 : 504;
    ctx.type = 'text/html';
    ctx.body = '<html><body>Bad Gateway</body></html>';
  }
  return undefined;
}

async function introspectionOrRevocation(ctx, next) {
  if (ctx.path === ROUTES.introspection) stats.introspections += 1;
  else stats.revocations += 1;
  const form = await readForm(ctx);
  if (rejectWrongAuthMethod(ctx, form)) return undefined;
  return next();
}

provider.use(async (ctx, next) => {
  if (ctx.path.startsWith('/__test/')) return controlEndpoints(ctx);
  if (ctx.method === 'GET' && ctx.path === ROUTES.authorization) addConsentPromptForOfflineAccess(ctx);
  if (ctx.method === 'POST' && ctx.path === ROUTES.token) return tokenEndpoint(ctx, next);
  if (ctx.method === 'POST' && (ctx.path === ROUTES.introspection || ctx.path === ROUTES.revocation)) {
    return introspectionOrRevocation(ctx, next);
  }
  return next();
});

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

const server = provider.listen(PORT, HOST, () => {
  process.stdout.write(`READY ${ISSUER}\n`);
});
server.on('error', (err) => fail(`cannot listen on ${HOST}:${PORT}: ${err.message}`));

for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => {
    server.close();
    server.closeAllConnections(); // includes requests held by token_fail=timeout
    process.exit(0);
  });
}
