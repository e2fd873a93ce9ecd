// Smoke check of the committed bundle in a real browser, with no game server: serves web/dist/ exactly as the
// gateway will (same three paths, the same strict CSP header), opens it in headless Chromium (playwright-core with
// the system's /usr/bin/chromium) and checks that
//   1. the page loads with no console error, no page error and no CSP violation (so no inline script/style, no
//      eval, no external URL slipped into the bundle);
//   2. the login screen and its form fields are there, window.realm.state() answers;
//   3. a login attempt against a server without /api (this static server answers 404) lands on the login screen
//      with a readable error, not a blank page.
// It writes out/login.png and out/login-error.png. Usage: node tools/screenshot.mjs [--chromium PATH]
//
// This is not an end-to-end test of the game (those run against the real server once the gateway lands).
import { createServer } from 'node:http';
import { mkdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { noWasmInLong } from './esbuild-plugins.mjs';
import { chromium } from 'playwright-core';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const exe = args.includes('--chromium') ? args[args.indexOf('--chromium') + 1] : '/usr/bin/chromium';
const CSP = "default-src 'self'; connect-src 'self' ws: wss:";
const files = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
};

// The render fixture (tools/fixture.ts): one frame of a made-up scene drawn by src/render.ts, under the same CSP.
const fixture = await esbuild.build({
  absWorkingDir: web,
  entryPoints: ['tools/fixture.ts'],
  bundle: true,
  format: 'iife',
  target: 'es2020',
  write: false,
  plugins: [noWasmInLong],
});
const fixtureHtml =
  '<!doctype html><html><head><meta charset="utf-8"><link rel="stylesheet" href="/style.css">' +
  '<script defer src="/fixture.js"></script></head><body><canvas id="world" width="960" height="600"></canvas></body></html>';

const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname;
  const f = files[path];
  if (path === '/fixture.html' || path === '/fixture.js') {
    const js = path.endsWith('.js');
    res.writeHead(200, { 'Content-Type': js ? 'text/javascript' : 'text/html', 'Content-Security-Policy': CSP });
    res.end(js ? fixture.outputFiles[0].contents : fixtureHtml);
    return;
  }
  if (req.method === 'GET' && f) {
    res.writeHead(200, { 'Content-Type': f[1], 'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff' });
    res.end(readFileSync(join(web, 'dist', f[0])));
  } else {
    res.writeHead(404, { 'Content-Type': 'text/plain' });
    res.end('not found');
  }
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/`;

const problems = [];
const browser = await chromium.launch({
  executablePath: exe,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('console', (m) => {
    // The 404 of the login attempt below is expected; anything else is a problem.
    if (m.type() === 'error' && !/404/.test(m.text())) problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.exposeFunction('__cspViolation', (d) => problems.push(`CSP violation: ${d}`));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__cspViolation(`${e.violatedDirective} ${e.blockedURI}`),
    );
  });
  await page.goto(url);
  await page.waitForSelector('[data-testid=screen-login]:not([hidden])');
  for (const id of ['username', 'password', 'btn-login', 'btn-register']) {
    if ((await page.locator(`[data-testid=${id}]`).count()) !== 1) problems.push(`missing [data-testid=${id}]`);
  }
  const state = await page.evaluate(() => window.realm.state());
  if (state.phase !== 'login' || state.connected !== false) problems.push(`unexpected state ${JSON.stringify(state)}`);
  mkdirSync(join(web, 'out'), { recursive: true });
  await page.screenshot({ path: join(web, 'out', 'login.png') });

  await page.fill('[data-testid=username]', 'smoke_user');
  await page.fill('[data-testid=password]', 'correct horse');
  await page.click('[data-testid=btn-login]');
  await page.waitForSelector('[data-testid=login-error]:not([hidden])');
  const text = await page.textContent('[data-testid=login-error]');
  const after = await page.evaluate(() => window.realm.state());
  if (!text || after.lastError === null) problems.push('no error shown after a failed login');
  await page.screenshot({ path: join(web, 'out', 'login-error.png') });
  console.log(`login error shown: ${text} (reason ${after.lastError?.reason})`);

  await page.goto(`${url}fixture.html`);
  await page.waitForSelector('body[data-drawn=yes]');
  await page.locator('#world').screenshot({ path: join(web, 'out', 'world.png') });
} finally {
  await browser.close();
  server.close();
}
if (problems.length > 0) {
  console.error(problems.join('\n'));
  process.exit(1);
}
console.log('smoke: page loads under the CSP with no error; screenshots in web/out/');
