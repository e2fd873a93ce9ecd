// End-to-end test of the web client against a real realm-server (issue 18), in headless Chromium (playwright-core
// driving the system's /usr/bin/chromium). tests/browser_e2e.rs starts the server and runs this script; it can also
// be run by hand against any server:
//
//   node tools/e2e.mjs --url http://127.0.0.1:PORT/ --out DIR [--client BIN --game HOST:PORT --ca CERT]
//                      [--chromium PATH]
//
// The scenario, as players would do it (keyboard, form, buttons; window.realm.state() only to read what the page
// knows):
//   1. two pages register through the login form with distinct names and enter the same world;
//   2. they walk apart, then toward each other with the keyboard; each sees the other; standing still, the
//      round trip the HUD shows stays small, and idle inputs keep the delta snapshots' baselines recent;
//   3. page A says a line on the zone channel; page B shows it in its chat log;
//   4. page A targets the nearest NPC (Tab) and casts firebolt (2); combat events appear in its combat log;
//   5. a screenshot of A's canvas is kept in DIR and checked to show the world (colours, non-background pixels);
//   6. with --client: a `realm-client --script` player joins; page A sees it in its snapshots, and each hears the
//      other's `say` line (say reaches 30 m, inside the 40 m view radius: hearing it means being in view);
//   7. page B's network drops (context.setOffline); the page reconnects with ?resume= by itself and is the same
//      entity afterwards, still seeing A;
//   8. page A logs out with the button and lands on the login screen.
// Throughout, the pages speak protocol 2 (delta snapshots): each checks that it decodes them, and none is malformed.
// Progress lines start with `e2e:`; the last line is `E2E-RESULT {json}` (exit 0) or `E2E-FAIL message` (exit 1).
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const argv = process.argv.slice(2);
function arg(name, fallback) {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : fallback;
}
const url = arg('url');
const out = resolve(arg('out', 'out/e2e'));
const exe = arg('chromium', '/usr/bin/chromium');
const clientBin = arg('client');
const gameAddr = arg('game');
const caFile = arg('ca');
if (!url) {
  console.error('usage: node tools/e2e.mjs --url http://HOST:PORT/ --out DIR [--client BIN --game ADDR --ca CERT]');
  process.exit(2);
}
mkdirSync(out, { recursive: true });

const t0 = Date.now();
const log = (...a) => console.log(`e2e: [${((Date.now() - t0) / 1000).toFixed(1)}s]`, ...a);
const result = { url, timings: {} };
const problems = [];
const mark = (name) => (result.timings[name] = Date.now() - t0);
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const tag = `${process.pid.toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;
const PASSWORD = 'e2e-password-123';

class Fail extends Error {}
function check(cond, message) {
  if (!cond) throw new Fail(message);
}

const state = (page) => page.evaluate(() => window.realm.state());

/** Polls the page's state until `pred(state)` holds; fails with `what` and the last state after `ms`. */
async function until(page, what, pred, ms = 10_000) {
  const deadline = Date.now() + ms;
  let s;
  for (;;) {
    s = await state(page);
    if (pred(s)) return s;
    if (Date.now() > deadline) {
      const brief = { phase: s.phase, entityId: s.entityId, position: s.position, others: s.others, chat: s.chat,
        combatLog: s.combatLog, lastError: s.lastError, log: s.log.slice(-8) };
      throw new Fail(`${what}: not within ${ms} ms; state ${JSON.stringify(brief)}`);
    }
    await sleep(100);
  }
}

const dist = (a, b) => Math.hypot(a.x - b.x, a.y - b.y);
const sees = (s, id) => s.others.some((o) => o.id === id && o.kind === 'player');

/** Holds a key for `ms` (keydown ... keyup, as a player would). */
async function hold(page, key, ms) {
  await page.keyboard.down(key);
  await sleep(ms);
  await page.keyboard.up(key);
}

async function newPlayerPage(browser, label) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.on('response', (r) => {
    if (r.status() < 400) return;
    const path = new URL(r.url()).pathname;
    // A busy answer to a registration is retried (register() records it). (/favicon.ico, which Chromium asks for
    // by itself, is served: any 4xx for it now is a problem.)
    if (path === '/api/register' && r.status() === 503) return;
    problems.push(`${label} HTTP ${r.status()} for ${r.request().method()} ${path}`);
  });
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    if (/^Failed to load resource: the server responded with a status of/.test(m.text())) return; // see 'response'
    // A dropped network makes Chromium log the failed socket and resume attempts: expected in step 7.
    if (/WebSocket|ERR_INTERNET_DISCONNECTED|net::ERR_/.test(m.text()) && page.offlineOnce) return;
    problems.push(`${label} console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${label} page error: ${e.message}`));
  await page.exposeFunction('__cspViolation', (d) => problems.push(`${label} CSP violation: ${d}`));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__cspViolation(`${e.violatedDirective} ${e.blockedURI}`),
    );
    // The test's hand on the page's sockets (to drop one as a network failure would, step 7): every WebSocket the
    // page opens is recorded with its URL; nothing else changes.
    const Native = window.WebSocket;
    window.__e2eSockets = [];
    window.WebSocket = class extends Native {
      constructor(...args) {
        super(...args);
        window.__e2eSockets.push(this);
      }
    };
  });
  await page.goto(url);
  await page.waitForSelector('[data-testid=screen-login]:not([hidden])');
  return { context, page };
}

/**
 * Registers through the form and waits to be in game. A registration is answered SERVER_BUSY at once while the
 * server's hashing slots for unknown names are taken (security.anonymous_hash_wait_ms = 0): the page says "try again
 * in a moment", and the player clicks again after that moment, as a person would (at most 5 times).
 */
async function register(page, name, retries) {
  await page.fill('[data-testid=username]', name);
  await page.fill('[data-testid=password]', PASSWORD);
  for (let attempt = 1; ; attempt++) {
    await page.click('[data-testid=btn-register]');
    // The click moves the page to `connecting` at once; it ends in game, or back on the login screen with an error.
    await page.waitForFunction(
      () => {
        const phase = document.body.dataset.phase;
        return phase === 'game' || (phase === 'login' && window.realm.state().lastError !== null);
      },
      null,
      { timeout: 15_000 },
    );
    const s = await state(page);
    if (s.phase === 'game') break;
    const reason = s.lastError?.reason;
    check(reason === 'LOGIN_ERROR_SERVER_BUSY' && attempt < 5, `${name} registers: ${JSON.stringify(s.lastError)}`);
    retries.push({ name, attempt, reason, message: s.lastError.message });
    log(`${name}: ${s.lastError.message}; clicking again in a second`);
    await sleep(1000);
  }
  return until(page, `${name} in game with a snapshot`, (s) => s.connected && s.entityId !== null && s.snapshots > 0);
}

/** Decodes a PNG in a blank page and measures it: distinct colours, the dominant one, pixels that differ from it. */
async function measurePng(browser, png, named) {
  const page = await browser.newPage();
  try {
    return await page.evaluate(async ([b64, named]) => {
      const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const bmp = await createImageBitmap(new Blob([bytes], { type: 'image/png' }));
      const c = new OffscreenCanvas(bmp.width, bmp.height);
      const g = c.getContext('2d');
      g.drawImage(bmp, 0, 0);
      const d = g.getImageData(0, 0, bmp.width, bmp.height).data;
      const counts = new Map();
      for (let i = 0; i < d.length; i += 4) {
        const k = (d[i] << 16) | (d[i + 1] << 8) | d[i + 2];
        counts.set(k, (counts.get(k) ?? 0) + 1);
      }
      let dominant = 0;
      let dominantCount = 0;
      for (const [k, n] of counts) if (n > dominantCount) [dominant, dominantCount] = [k, n];
      const pixels = bmp.width * bmp.height;
      const namedPixels = {};
      for (const [name, hex] of Object.entries(named)) namedPixels[name] = counts.get(parseInt(hex.slice(1), 16)) ?? 0;
      return {
        namedPixels,
        width: bmp.width,
        height: bmp.height,
        distinctColours: counts.size,
        background: `#${dominant.toString(16).padStart(6, '0')}`,
        nonBackgroundPixels: pixels - dominantCount,
        nonBackgroundFraction: (pixels - dominantCount) / pixels,
      };
    }, [png.toString('base64'), named]);
  } finally {
    await page.close();
  }
}

/** Runs `realm-client --script -`; resolves its events as they come (lines), and its end. */
function startScriptPlayer(script) {
  const child = spawn(clientBin, ['--server', gameAddr, '--ca', caFile, '--script', '-'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const lines = [];
  const waiters = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    log(`  client> ${line}`);
    for (const w of [...waiters]) if (w.pred(line)) w.ok(line);
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const ended = new Promise((ok) => child.on('exit', (code) => ok({ code, stderr })));
  child.stdin.end(script);
  const line = (pred, ms, what) =>
    new Promise((ok, fail) => {
      const found = lines.find(pred);
      if (found !== undefined) return ok(found);
      const w = {
        pred,
        ok: (l) => {
          waiters.splice(waiters.indexOf(w), 1);
          clearTimeout(timer);
          ok(l);
        },
      };
      const timer = setTimeout(() => fail(new Fail(`client never printed ${what}: ${lines.join(' | ')}`)), ms);
      waiters.push(w);
    });
  return { child, lines, line, ended };
}

const browser = await chromium.launch({
  executablePath: exe,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking'],
});
let exitCode = 0;
try {
  // 1. Two players register through the form.
  const nameA = `e2e_a_${tag}`;
  const nameB = `e2e_b_${tag}`;
  const [{ page: a }, { page: b, context: contextB }] = await Promise.all([
    newPlayerPage(browser, 'A'),
    newPlayerPage(browser, 'B'),
  ]);
  // Both click "Create account" at the same moment.
  const retries = [];
  let [sa, sb] = await Promise.all([register(a, nameA, retries), register(b, nameB, retries)]);
  result.registerRetries = retries;
  check(sa.entityId !== sb.entityId, 'two registrations are two entities');
  check(sa.zone === sb.zone, `same zone: ${sa.zone} / ${sb.zone}`);
  result.players = {
    a: { name: nameA, entityId: sa.entityId, spawn: sa.position },
    b: { name: nameB, entityId: sb.entityId, spawn: sb.position },
  };
  result.zone = sa.zone;
  // The pages speak protocol 2 (`&protocol=2`): their snapshots are delta snapshots, decoded and acknowledged.
  [sa, sb] = await Promise.all([
    until(a, 'A decodes delta snapshots', (s) => s.snapshotAck > 0),
    until(b, 'B decodes delta snapshots', (s) => s.snapshotAck > 0),
  ]);
  mark('registered');
  log(`registered ${nameA} (entity ${sa.entityId}) and ${nameB} (entity ${sb.entityId}) in ${sa.zone}`);

  // 2. Walk apart (A west, B east), then toward each other, with the keyboard.
  await Promise.all([hold(a, 'KeyA', 1200), hold(b, 'ArrowRight', 1200)]);
  [sa, sb] = await Promise.all([
    until(a, 'A settled after walking west', (s) => s.pendingInputs === 0 && s.acknowledgedInput > 0),
    until(b, 'B settled after walking east', (s) => s.pendingInputs === 0 && s.acknowledgedInput > 0),
  ]);
  const apart = dist(sa.serverPosition, sb.serverPosition);
  check(sa.serverPosition.x < result.players.a.spawn.x - 4, `A walked west: ${JSON.stringify(sa.serverPosition)}`);
  check(sb.serverPosition.x > result.players.b.spawn.x + 4, `B walked east: ${JSON.stringify(sb.serverPosition)}`);
  await Promise.all([hold(a, 'KeyD', 800), hold(b, 'ArrowLeft', 800)]);
  [sa, sb] = await Promise.all([
    until(a, 'A settled and sees B', (s) => s.pendingInputs === 0 && sees(s, sb.entityId)),
    until(b, 'B settled and sees A', (s) => s.pendingInputs === 0 && sees(s, sa.entityId)),
  ]);
  const together = dist(sa.serverPosition, sb.serverPosition);
  check(together < apart - 5, `walking toward each other closed the gap: ${apart.toFixed(1)} -> ${together.toFixed(1)} m`);
  // Each sees the other where the other is (interpolation draws others ~2 ticks late; they stand still now).
  [sa, sb] = await Promise.all([
    until(a, 'A sees B where B is', (s) => {
      const o = s.others.find((e) => e.id === sb.entityId);
      return o !== undefined && dist(o.position, sb.serverPosition) < 1.0;
    }),
    until(b, 'B sees A where A is', (s) => {
      const o = s.others.find((e) => e.id === sa.entityId);
      return o !== undefined && dist(o.position, sa.serverPosition) < 1.0;
    }),
  ]);
  result.walk = {
    apartM: apart,
    togetherM: together,
    a: sa.serverPosition,
    b: sb.serverPosition,
    aSeesB: sa.others.find((e) => e.id === sb.entityId).position,
    bSeesA: sb.others.find((e) => e.id === sa.entityId).position,
    aInputs: sa.lastInputSequence,
    bInputs: sb.lastInputSequence,
  };
  // Standing still, the HUD's round trip stays what the last acknowledged input or ping measured (loopback: a few
  // ms); it must not grow with the time since the last key press. And the pages keep acknowledging (an idle input
  // every 4 ticks): 2.5 s is past the server's 32-tick acknowledgement window, yet no snapshot comes against an
  // empty view and the baselines stay a few ticks old.
  const beforeIdle = await Promise.all([state(a), state(b)]);
  await sleep(2500);
  const idle = await Promise.all([state(a), state(b)]);
  result.walk.idleDeltas = idle.map((x, k) => ({
    decoded: x.decoded.decoded - beforeIdle[k].decoded.decoded,
    againstEmptyView: x.decoded.againstEmptyView - beforeIdle[k].decoded.againstEmptyView,
    lastBaselineAge: x.decoded.lastBaselineAge,
    inputs: x.lastInputSequence - beforeIdle[k].lastInputSequence,
  }));
  check(
    result.walk.idleDeltas.every((d) => d.decoded >= 20 && d.againstEmptyView === 0 && d.lastBaselineAge > 0 && d.lastBaselineAge < 16),
    `standing still, delta snapshots stay against recent baselines: ${JSON.stringify(result.walk.idleDeltas)}`,
  );
  result.walk.rttMsAfterIdle = idle.map((x) => x.rttMs);
  result.walk.hudNet = await a.textContent('[data-testid=hud-net]');
  check(
    idle.every((x) => x.rttMs !== null && x.rttMs < 1000),
    `round trip after 2.5 s standing still: ${JSON.stringify(result.walk.rttMsAfterIdle)} ms`,
  );
  mark('walked');
  log(`walked: ${apart.toFixed(1)} m apart, then ${together.toFixed(1)} m; each sees the other`);

  // 3. A chats on the zone channel through the chat box; B shows the line.
  const zoneLine = `hello zone from ${nameA}`;
  await a.keyboard.press('Enter'); // Enter focuses the chat box
  await a.selectOption('[data-testid=chat-channel]', 'zone');
  await a.keyboard.type(zoneLine);
  await a.keyboard.press('Enter');
  sb = await until(b, 'B receives the zone line', (s) =>
    s.chat.some((c) => c.channel === 'zone' && c.text === zoneLine && c.fromEntity === sa.entityId),
  );
  await b.waitForFunction(
    (t) => document.querySelector('[data-testid=chat-log]').textContent.includes(t),
    zoneLine,
    { timeout: 5_000 },
  );
  result.chat = { line: zoneLine, bChatLog: await b.textContent('[data-testid=chat-log]') };
  mark('chatted');
  log(`B shows A's zone line: ${JSON.stringify(sb.chat.at(-1))}`);

  // 4. A targets the nearest NPC with Tab and casts firebolt with 2.
  await a.locator('[data-testid=world]').focus();
  await a.keyboard.press('Tab');
  sa = await until(a, 'A has an NPC target', (s) => s.target !== null && s.others.some((o) => o.id === s.target && o.kind === 'npc'));
  const npc = sa.others.find((o) => o.id === sa.target);
  await a.keyboard.press('2');
  sa = await until(a, 'A sees its attack in the combat log', (s) => s.combatLog.some((l) => /^you (hit|missed) npc#\d+ .*with firebolt/.test(l)), 10_000);
  await a.waitForFunction(() => document.querySelector('[data-testid=combat-log]').children.length > 0, null, {
    timeout: 5_000,
  });
  result.combat = {
    npc,
    distanceM: dist(npc.position, sa.position),
    combatLog: sa.combatLog,
    domLines: await a.locator('[data-testid=combat-log] li').allTextContents(),
  };
  mark('attacked');
  log(`A attacked ${npc.name} at ${result.combat.distanceM.toFixed(1)} m: ${JSON.stringify(sa.combatLog)}`);

  // 5. The canvas shows the world: kept as a test artefact and measured.
  await sleep(300);
  const shot = join(out, 'world-a.png');
  const png = await a.locator('[data-testid=world]').screenshot({ path: shot });
  await a.screenshot({ path: join(out, 'page-a.png') });
  await b.screenshot({ path: join(out, 'page-b.png') });
  // Fill colours of src/render.ts: the player (a gold circle), other players (blue circles), an NPC of the
  // player's level (a yellow diamond). The ground, its grid and the labels make the rest.
  const named = { self: '#e8b64c', otherPlayer: '#4aa3ff', npcSameLevel: '#f2de4b' };
  result.screenshot = { path: shot, bytes: png.length, ...(await measurePng(browser, png, named)) };
  const m = result.screenshot;
  check(
    m.distinctColours >= 16 && m.nonBackgroundFraction >= 0.01 && Object.values(m.namedPixels).every((n) => n >= 20),
    `the canvas shows a world with the player, the other player and the NPC: ${JSON.stringify(m)}`,
  );
  mark('screenshot');
  log(`screenshot ${shot}: ${JSON.stringify(result.screenshot)}`);

  // 6. A `realm-client --script` player in the same world.
  if (clientBin) {
    const nameN = `e2e_n_${tag}`;
    const pageLine = `hello script from ${nameA}`;
    const scriptLine = `hello page from ${nameN}`;
    const player = startScriptPlayer(
      `register ${nameN} ${PASSWORD}\nwait 4\nsay ${scriptLine}\nexpect-chat ${pageLine}\nwait 1\nlogout\n`,
    );
    const joined = await player.line((l) => l.startsWith('logged-in '), 20_000, 'logged-in');
    const nativeEntity = Number(/ entity=(\d+)/.exec(joined)[1]);
    sa = await until(a, 'A sees the script player', (s) => sees(s, nativeEntity), 5_000);
    await a.evaluate((t) => window.realm.chat(t, 'say'), pageLine);
    sa = await until(
      a,
      'A hears the script player',
      (s) => s.chat.some((c) => c.channel === 'say' && c.fromEntity === nativeEntity && c.text === scriptLine),
      10_000,
    );
    const end = await Promise.race([player.ended, sleep(15_000).then(() => ({ code: 'timeout' }))]);
    check(end.code === 0, `the script player exits 0: ${end.code} ${end.stderr ?? ''} ${player.lines.join(' | ')}`);
    const heard = player.lines.find((l) => l.startsWith(`chat from=${nameA} channel=say text=${pageLine}`));
    check(heard !== undefined, `the script player hears A: ${player.lines.join(' | ')}`);
    result.native = {
      name: nameN,
      entityId: nativeEntity,
      aSeesItAt: sa.others.find((o) => o.id === nativeEntity)?.position ?? null,
      transcript: player.lines,
    };
    mark('native');
    log(`the script player (entity ${nativeEntity}) and A saw and heard each other`);
  }

  // 7. B's network drops; the page resumes by itself as the same entity. Chromium's offline emulation
  // (context.setOffline) fails new connections but leaves an open WebSocket alone, so the drop itself is the page's
  // socket closing with 4000 (not 1000: "I am done"), as a proxy or a dying connection would, while offline.
  const before = await state(b);
  const socketsBefore = await b.evaluate(() => window.__e2eSockets.length);
  b.offlineOnce = true;
  const dropAt = Date.now();
  await contextB.setOffline(true);
  await b.evaluate(() => window.__e2eSockets.at(-1).close(4000, 'e2e: network dropped'));
  let s = await until(b, 'B notices the drop', (x) => x.phase === 'resuming', 5_000);
  const resumingText = await b.textContent('[data-testid=hud-status]');
  await sleep(2500); // resume attempts (at once, then every second) fail while offline
  const attemptsOffline = (await b.evaluate(() => window.__e2eSockets.length)) - socketsBefore;
  await contextB.setOffline(false);
  s = await until(b, 'B resumes', (x) => x.phase === 'game' && x.connected && x.snapshots > 0, 15_000);
  const resumedMs = Date.now() - dropAt;
  check(s.entityId === before.entityId, `same entity after resume: ${before.entityId} -> ${s.entityId}`);
  check(dist(s.position, before.position) < 2, `same place after resume: ${JSON.stringify(before.position)} -> ${JSON.stringify(s.position)}`);
  s = await until(b, 'B still sees A after resuming', (x) => sees(x, sa.entityId), 5_000);
  // And it plays on: a step east is acknowledged by the new session.
  await hold(b, 'KeyD', 300);
  s = await until(b, 'B walks after resuming', (x) => x.acknowledgedInput > 0 && x.pendingInputs === 0);
  const resumeUrls = await b.evaluate((n) => window.__e2eSockets.slice(n).map((w) => w.url.replace(/=.*$/, '=...')), socketsBefore);
  result.resume = {
    how: 'setOffline + socket closed with 4000',
    attemptsOffline,
    resumeUrls,
    hudWhileResuming: resumingText,
    entityBefore: before.entityId,
    entityAfter: s.entityId,
    positionBefore: before.position,
    positionAfter: s.position,
    millis: resumedMs,
    log: s.log.map((l) => l.text).filter((t) => /connection|resum|entered/.test(t)),
  };
  mark('resumed');
  log(`B dropped (${attemptsOffline} attempts while offline) and resumed as entity ${s.entityId} in ${resumedMs} ms`);

  // 8. A logs out with the button.
  await a.click('[data-testid=btn-logout]');
  await a.waitForSelector('body[data-phase=login]', { timeout: 10_000 });
  result.logout = { notice: await a.textContent('[data-testid=login-error]') };
  mark('logged-out');

  // Dropped delta snapshots: stale or against a lost view are harmless (none are expected over one WebSocket);
  // a malformed one is a server bug.
  result.undecodable = { a: (await state(a)).undecodable, b: (await state(b)).undecodable };
  check(
    result.undecodable.a.malformed === 0 && result.undecodable.b.malformed === 0,
    `malformed delta snapshots: ${JSON.stringify(result.undecodable)}`,
  );
  check(problems.length === 0, `page problems: ${problems.join('; ')}`);
  result.problems = problems;
  result.seconds = (Date.now() - t0) / 1000;
  writeFileSync(join(out, 'result.json'), JSON.stringify(result, null, 2));
  console.log(`E2E-RESULT ${JSON.stringify(result)}`);
} catch (e) {
  exitCode = 1;
  console.log(`E2E-FAIL ${e instanceof Fail ? e.message : e.stack ?? e}`);
  if (problems.length > 0) console.log(`E2E-FAIL page problems: ${problems.join('; ')}`);
  for (const [i, p] of browser.contexts().flatMap((c) => c.pages()).entries()) {
    await p.screenshot({ path: join(out, `failure-${i}.png`) }).catch(() => {});
  }
} finally {
  await browser.close();
}
process.exit(exitCode);
