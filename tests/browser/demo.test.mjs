// Real-browser test of `portcullis demo` (issue 4).
//
// For each mode (single instance with the memory store; three instances sharing a private
// Redis) it starts the demo with a short access-token TTL, logs in through the dev OP's real
// login page in Debian's Chromium (driven by playwright-core, never a downloaded browser),
// waits past the token's expiry, fires 20 parallel API calls with the page's button, and
// asserts that all 20 succeeded and that the OP counted exactly one refresh grant for them.
// Then it reloads the page and checks the user is still logged in, and saves a full-page
// screenshot to artifacts/demo-<mode>.png.
//
// Environment:
//   PORTCULLIS_BIN   the portcullis binary (default: $CARGO_TARGET_DIR/debug/portcullis,
//                    then .../release/portcullis, with CARGO_TARGET_DIR defaulting to
//                    ~/.cache/portcullis-target, then target/ in the repository)
//   CHROMIUM_PATH    the browser (default /usr/bin/chromium)
//   REDIS_SERVER     the redis-server binary (default: redis-server on PATH)
//
// Run: node --test tests/browser/*.test.mjs   (scripts/test.sh does, after cargo test)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..');
const ARTIFACTS = path.join(REPO_ROOT, 'artifacts');

const TOKEN_TTL_SECONDS = 5;
const PARALLEL_CALLS = 20;
const STARTUP_TIMEOUT_MS = 30_000; // demo (OP + app + gateway[s]) up and printing DEMO READY
const STEP_TIMEOUT_MS = 15_000; // any single browser wait
const MODE_TIMEOUT_MS = 55_000; // one whole mode
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-proxy-server', // everything here is on loopback
];

// --- locating the binaries ---------------------------------------------------------------

function portcullisBin() {
  if (process.env.PORTCULLIS_BIN) return process.env.PORTCULLIS_BIN;
  const targets = [
    process.env.CARGO_TARGET_DIR,
    path.join(os.homedir(), '.cache', 'portcullis-target'),
    path.join(REPO_ROOT, 'target'),
  ].filter(Boolean);
  for (const dir of targets) {
    for (const profile of ['debug', 'release']) {
      const bin = path.join(dir, profile, 'portcullis');
      if (existsSync(bin)) return bin;
    }
  }
  throw new Error('portcullis binary not found: set PORTCULLIS_BIN or run `cargo build -p portcullis-gateway`');
}

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const REDIS_SERVER = process.env.REDIS_SERVER || 'redis-server';

// --- processes -----------------------------------------------------------------------------

/** Every child this file starts; killed (SIGKILL) if the runner exits with any still alive. */
const children = new Set();
process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
});

/** A free TCP port on 127.0.0.1 (bound, read, released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/**
 * Starts a process, keeping the last lines of its output for failure messages.
 * Returns { child, output(), exited } where `exited` resolves with { code, signal }.
 */
function start(name, command, args) {
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env } });
  children.add(child);
  const lines = [];
  const keep = (stream, tag) => {
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      partial += chunk;
      const parts = partial.split('\n');
      partial = parts.pop();
      for (const line of parts) {
        lines.push(`[${name} ${tag}] ${line}`);
        if (lines.length > 200) lines.shift();
        child.emit('line', tag, line);
      }
    });
  };
  keep(child.stdout, 'out');
  keep(child.stderr, 'err');
  const exited = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      children.delete(child);
      resolve({ code, signal });
    });
  });
  child.on('error', (err) => lines.push(`[${name}] spawn error: ${err.message}`));
  return { name, child, exited, output: () => lines.join('\n') };
}

/** Sends `signal`, then SIGKILL after `graceMs`; resolves with how the process ended. */
async function stop(proc, signal = 'SIGTERM', graceMs = 5_000) {
  if (!proc || proc.child.exitCode !== null || proc.child.signalCode !== null) {
    return proc ? { code: proc.child.exitCode, signal: proc.child.signalCode, forced: false } : null;
  }
  proc.child.kill(signal);
  const timer = sleep(graceMs, 'timeout', { ref: false }); // an unref'd timer: it must not hold the runner
  const result = await Promise.race([proc.exited, timer]);
  if (result !== 'timeout') return { ...result, forced: false };
  proc.child.kill('SIGKILL');
  return { ...(await proc.exited), forced: true };
}

/** Resolves when `predicate(line)` matches a stdout line (with its match); rejects on exit or timeout. */
function waitForLine(proc, predicate, timeoutMs, what) {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      clearTimeout(timer);
      proc.child.off('line', onLine);
      proc.child.off('exit', onExit);
    };
    const onLine = (tag, line) => {
      if (tag !== 'out') return;
      const match = predicate(line);
      if (match) {
        cleanup();
        resolve(match);
      }
    };
    const onExit = (code, signal) => {
      cleanup();
      reject(new Error(`${proc.name} exited (code ${code}, signal ${signal}) before ${what}`));
    };
    const timer = setTimeout(() => {
      cleanup();
      reject(new Error(`${proc.name}: no ${what} within ${timeoutMs} ms`));
    }, timeoutMs);
    proc.child.on('line', onLine);
    proc.child.on('exit', onExit);
  });
}

/** Resolves once something on 127.0.0.1:port answers `PING` with `+PONG`. */
async function waitForRedis(proc, port, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (proc.child.exitCode !== null) throw new Error('redis-server exited early');
    const pong = await new Promise((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      let data = '';
      socket.setTimeout(1_000, () => socket.destroy());
      socket.on('connect', () => socket.write('PING\r\n'));
      socket.on('data', (chunk) => {
        data += chunk;
        if (data.includes('\r\n')) socket.end();
      });
      socket.on('close', () => resolve(data.startsWith('+PONG')));
      socket.on('error', () => resolve(false));
    });
    if (pong) return;
    await sleep(100);
  }
  throw new Error(`redis-server on port ${port} not answering after ${timeoutMs} ms`);
}

// --- page helpers ------------------------------------------------------------------------------

/** The first integer in an element's text (e.g. "3", "3 grants", "refresh grants: 3"). */
async function numberIn(page, selector) {
  const text = (await page.locator(selector).textContent({ timeout: STEP_TIMEOUT_MS })) ?? '';
  const match = text.replace(/[,\u00a0\u202f]/g, '').match(/-?\d+/);
  assert.ok(match, `${selector} holds no number: ${JSON.stringify(text)}`);
  return Number(match[0]);
}

/** Remaining seconds shown by #token-remaining ("4 s", "0:04", "4.2s", "expired" → 0). */
async function tokenRemaining(page) {
  const text = ((await page.locator('#token-remaining').textContent({ timeout: STEP_TIMEOUT_MS })) ?? '').trim();
  if (/expired|refresh/i.test(text)) return { text, seconds: 0 };
  const clock = text.match(/(\d+):(\d{2})/);
  if (clock) return { text, seconds: Number(clock[1]) * 60 + Number(clock[2]) };
  const plain = text.match(/-?\d+(?:\.\d+)?/);
  return { text, seconds: plain ? Math.max(0, Number(plain[0])) : NaN };
}

// --- the test -------------------------------------------------------------------------------------

let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: run scripts/install-test-deps.sh (apt-get install chromium)`);
  mkdirSync(ARTIFACTS, { recursive: true });
  // playwright gives each launch a fresh temporary profile (--user-data-dir) and removes it on close.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, timeout: 30_000 });
});

after(async () => {
  await browser?.close().catch(() => {});
});

const MODES = [
  { name: 'single', title: 'single instance, memory store', redis: false, instances: 1 },
  { name: 'redis-3', title: 'three instances, redis store', redis: true, instances: 3 },
];

for (const mode of MODES) {
  test(`demo in a real browser: ${mode.title}`, { timeout: MODE_TIMEOUT_MS }, async (t) => {
    let redis;
    let demo;
    let context;
    let page;
    const browserLog = [];
    try {
      // -- start redis (mode b) and the demo
      const args = ['demo', '--port', String(await freePort()), '--token-ttl', `${TOKEN_TTL_SECONDS}s`];
      if (mode.redis) {
        const redisPort = await freePort();
        redis = start('redis', REDIS_SERVER, [
          '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
        ]);
        await waitForRedis(redis, redisPort, 10_000);
        args.push('--store', 'redis', '--redis-url', `redis://127.0.0.1:${redisPort}`);
      }
      if (mode.instances > 1) args.push('--instances', String(mode.instances));
      t.diagnostic(`portcullis ${args.join(' ')}`);
      demo = start('demo', portcullisBin(), args);
      const ready = await waitForLine(
        demo,
        (line) => line.trim().match(/^DEMO READY (http:\/\/127\.0\.0\.1:\d+\/)$/),
        STARTUP_TIMEOUT_MS,
        'DEMO READY line',
      );
      const demoUrl = ready[1];
      assert.equal(new URL(demoUrl).port, args[2], 'the demo listens on the --port it was given');
      const demoOrigin = new URL(demoUrl).origin;

      context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
      context.setDefaultTimeout(STEP_TIMEOUT_MS);
      context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
      page = await context.newPage();
      page.on('console', (msg) => browserLog.push(`[console.${msg.type()}] ${msg.text()} (${msg.location().url})`));
      page.on('response', (res) => {
        if (res.status() >= 400) browserLog.push(`[response] ${res.status()} ${res.request().method()} ${res.url()}`);
      });
      page.on('pageerror', (err) => browserLog.push(`[pageerror] ${err.message}`));
      page.on('requestfailed', (req) => browserLog.push(`[requestfailed] ${req.url()} ${req.failure()?.errorText}`));

      // -- open the demo: the gateway sends the browser to the dev OP's login page
      await page.goto(demoUrl);
      await page.locator('input[name=username]').waitFor({ state: 'visible' });
      assert.notEqual(new URL(page.url()).origin, demoOrigin, `login page should be the OP's, not the gateway's: ${page.url()}`);

      // -- log in through the real form
      await page.fill('input[name=username]', 'demo');
      await page.fill('input[name=password]', 'demo');
      await Promise.all([
        page.waitForURL((url) => url.origin === demoOrigin && !url.pathname.startsWith('/oauth2/'), {
          waitUntil: 'load',
        }),
        page.click('button[type=submit]'),
      ]);
      const user = page.locator('#user');
      await user.waitFor({ state: 'visible' });
      const loggedInAt = Date.now();
      assert.match((await user.textContent()) ?? '', /demo/i, '#user names the logged-in user');
      assert.equal(await page.locator('input[name=password]').count(), 0, 'no login form on the demo page');

      // -- the token's remaining life counts down; wait until it has expired
      await page.waitForFunction(
        () => /\d|expired/i.test(document.querySelector('#token-remaining')?.textContent ?? ''),
        null,
        { timeout: STEP_TIMEOUT_MS },
      );
      const first = await tokenRemaining(page);
      assert.ok(
        Number.isFinite(first.seconds) && first.seconds <= TOKEN_TTL_SECONDS,
        `#token-remaining shows at most the ${TOKEN_TTL_SECONDS}s TTL: ${JSON.stringify(first.text)}`,
      );
      // The page redraws about once a second: wait for the next change.
      await page
        .waitForFunction(
          (before) => (document.querySelector('#token-remaining')?.textContent ?? '').trim() !== before,
          first.text,
          { timeout: 3_000 },
        )
        .catch(() => {});
      const second = await tokenRemaining(page);
      assert.ok(
        second.seconds < first.seconds || second.seconds === 0,
        `#token-remaining counts down: ${JSON.stringify(first.text)} then ${JSON.stringify(second.text)}`,
      );
      // The token was issued before the page appeared, so TTL + 1.5 s after that it is surely expired.
      await sleep(Math.max(0, loggedInAt + TOKEN_TTL_SECONDS * 1_000 + 1_500 - Date.now()));
      const expired = await tokenRemaining(page);
      assert.equal(expired.seconds, 0, `#token-remaining shows the token expired: ${JSON.stringify(expired.text)}`);

      // -- fire 20 parallel calls through the gateway with the page's button
      const results = page.locator('#results');
      assert.notEqual(await results.getAttribute('data-done'), 'true', '#results is not done before firing');
      await page.fill('#parallel-count', String(PARALLEL_CALLS));
      await page.click('#fire');
      await page.locator('#results[data-done="true"]').waitFor({ state: 'attached' });

      const statuses = await page.locator('#results .call').evaluateAll((calls) =>
        calls.map((call) => call.getAttribute('data-status')),
      );
      t.diagnostic(`call statuses: ${statuses.join(' ')}`);
      assert.equal(statuses.length, PARALLEL_CALLS, `#results shows ${PARALLEL_CALLS} calls`);
      const failed = statuses.filter((status) => !/^2\d\d$/.test(status ?? ''));
      assert.deepEqual(failed, [], 'every call succeeded (2xx)');

      const summary = page.locator('#summary');
      const summaryText = ((await summary.textContent()) ?? '').trim();
      t.diagnostic(`summary: ${summaryText}`);
      assert.match(summaryText, new RegExp(`\\b${PARALLEL_CALLS}\\s*/\\s*${PARALLEL_CALLS}\\b`), '#summary says 20/20');
      assert.equal(await summary.getAttribute('data-ok'), String(PARALLEL_CALLS), '#summary data-ok');
      assert.equal(await summary.getAttribute('data-total'), String(PARALLEL_CALLS), '#summary data-total');

      for (const extra of ['#tokens-used', '#instances']) {
        if (await page.locator(extra).count()) t.diagnostic(`${extra.slice(1)}: ${(await page.locator(extra).textContent())?.trim()}`);
      }
      const grantsBefore = await numberIn(page, '#grants-before');
      const grantsAfter = await numberIn(page, '#grants-after');
      t.diagnostic(`refresh grants: before ${grantsBefore}, after ${grantsAfter}`);
      assert.equal(
        grantsAfter - grantsBefore,
        1,
        `exactly one refresh grant for ${PARALLEL_CALLS} parallel calls after expiry (before ${grantsBefore}, after ${grantsAfter})`,
      );

      const shot = path.join(ARTIFACTS, `demo-${mode.name}.png`);
      await page.screenshot({ path: shot, fullPage: true });
      t.diagnostic(`screenshot: ${path.relative(REPO_ROOT, shot)}`);

      // -- reload: still logged in (same session, no trip to the login page)
      await page.reload({ waitUntil: 'load' });
      assert.equal(new URL(page.url()).origin, demoOrigin, `reload stays on the demo: ${page.url()}`);
      await page.locator('#user').waitFor({ state: 'visible' });
      assert.match((await page.locator('#user').textContent()) ?? '', /demo/i, '#user after reload');
      assert.equal(await page.locator('input[name=password]').count(), 0, 'no login form after reload');

      // -- Ctrl-C stops the demo (and all it started)
      const stopped = await stop(demo, 'SIGINT', 10_000);
      assert.equal(stopped.forced, false, "the demo exits on Ctrl-C (SIGINT) within 10 s");
    } catch (err) {
      if (page) {
        const shot = path.join(ARTIFACTS, `demo-${mode.name}-failure.png`);
        await page.screenshot({ path: shot, fullPage: true, timeout: 5_000 }).catch(() => {});
        err.message += `\n-- page: ${page.url()} (screenshot ${path.relative(REPO_ROOT, shot)})`;
      }
      if (browserLog.length) err.message += `\n-- browser:\n${browserLog.slice(-40).join('\n')}`;
      if (demo) err.message += `\n-- demo output:\n${demo.output()}`;
      if (redis) err.message += `\n-- redis output (last lines):\n${redis.output().split('\n').slice(-10).join('\n')}`;
      throw err;
    } finally {
      await context?.close().catch(() => {});
      await stop(demo, 'SIGTERM', 5_000);
      await stop(redis, 'SIGTERM', 5_000);
    }
  });
}
