// Every refusal and every kick reason of the schema has its own human text, and the HTTP API's errors map to them.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KickReason, LoginErrorReason } from '../src/proto.js';
import { apiError, utf8Length, wsUrl } from '../src/session.js';
import { KICK_TEXT, LOGIN_ERROR_TEXT, closeText, kickText, loginErrorText } from '../src/texts.js';

const names = (e: object, prefix: string) => Object.keys(e).filter((k) => k.startsWith(prefix));

test('every LoginErrorReason and KickReason of realm.proto has a distinct text', () => {
  const logins = names(LoginErrorReason, 'LOGIN_ERROR_');
  const kicks = names(KickReason, 'KICK_REASON_');
  assert.ok(logins.length >= 14 && kicks.length >= 15);
  for (const n of logins) assert.ok(LOGIN_ERROR_TEXT[n], `no text for ${n}`);
  for (const n of kicks) assert.ok(KICK_TEXT[n], `no text for ${n}`);
  assert.equal(new Set(logins.map((n) => LOGIN_ERROR_TEXT[n])).size, logins.length);
  assert.equal(new Set(kicks.map((n) => KICK_TEXT[n])).size, kicks.length);
});

test('login error texts say when to retry; numbers and names give the same text', () => {
  assert.equal(loginErrorText('LOGIN_ERROR_SERVER_BUSY', 1500), LOGIN_ERROR_TEXT.LOGIN_ERROR_SERVER_BUSY + ' (retry in 2 s)');
  assert.match(loginErrorText(LoginErrorReason.LOGIN_ERROR_LOCKED_OUT, 300_000), /retry in 5 min/);
  assert.equal(loginErrorText(LoginErrorReason.LOGIN_ERROR_INVALID_CREDENTIALS), 'Wrong username or password.');
  assert.match(loginErrorText(99), /99/);
  assert.equal(kickText(KickReason.KICK_REASON_IDLE_TIMEOUT), KICK_TEXT.KICK_REASON_IDLE_TIMEOUT);
});

test('HTTP errors: the JSON reason wins, the status decides when the body is not the contract', () => {
  const taken = apiError(409, '{"reason":"LOGIN_ERROR_USERNAME_TAKEN","message":"taken","retry_after_ms":0}');
  assert.deepEqual([taken.reason, taken.detail], ['LOGIN_ERROR_USERNAME_TAKEN', 'taken']);
  const limited = apiError(429, '{"reason":"LOGIN_ERROR_RATE_LIMITED","message":"","retry_after_ms":60000}');
  assert.equal(limited.retryAfterMs, 60000);
  assert.match(limited.message, /retry in 60 s/);
  assert.equal(apiError(503, '<html>bad gateway</html>').reason, 'LOGIN_ERROR_SERVER_BUSY');
  assert.equal(apiError(401, '').reason, 'LOGIN_ERROR_INVALID_CREDENTIALS');
  assert.equal(apiError(403, '{"reason":"LOGIN_ERROR_BANNED"}').reason, 'LOGIN_ERROR_BANNED');
  assert.equal(apiError(400, '{}').reason, 'HTTP_400');
  assert.deepEqual([apiError(404, 'not found').reason, apiError(404, '').message], ['HTTP_404', 'The server cannot log you in (HTTP 404).']);
  assert.equal(apiError(500, '{"reason":"LOGIN_ERROR_SERVER_BUSY"}').reason, 'LOGIN_ERROR_SERVER_BUSY');
  assert.equal(apiError(401, '{"reason":"__proto__"}').reason, 'LOGIN_ERROR_INVALID_CREDENTIALS');
});

test('close codes of the gateway contract have their own texts', () => {
  assert.match(closeText(1008, ''), /token/);
  assert.match(closeText(1009, ''), /too big/);
  assert.match(closeText(1011, ''), /internal error/);
  assert.match(closeText(1006, ''), /lost \(code 1006\)/);
});

test('ws URLs: same origin for login, the zone web_address for transfers, tokens URL-encoded, protocol 2 on every one', () => {
  assert.equal(wsUrl('http://127.0.0.1:8080', { token: 'a.b+c' }), 'ws://127.0.0.1:8080/ws?token=a.b%2Bc&protocol=2');
  assert.equal(wsUrl('https://zone2.example:8443', { transfer: '-_AA', username: 'ann' }), 'wss://zone2.example:8443/ws?transfer=-_AA&username=ann&protocol=2');
  assert.equal(wsUrl('http://h:1/some/path?x=1', { resume: 'QQ' }), 'ws://h:1/ws?resume=QQ&protocol=2');
});

test('chat length is counted in UTF-8 bytes like the server does', () => {
  assert.equal(utf8Length('héllo'), 6);
  assert.equal(utf8Length('⚔'), 3);
});

test('what a closed socket means: kicks and logouts are final, drops in game resume, 1008 asks for a login', async () => {
  const { afterClose } = await import('../src/session.js');
  const base = { phase: 'game' as const, code: 1006, leaving: false, explained: false, loggedOut: false, hasResumeToken: true };
  assert.equal(afterClose(base), 'resume', 'a dropped connection in game resumes');
  assert.equal(afterClose({ ...base, code: 1011 }), 'resume', 'a server error without a Kick resumes too');
  assert.equal(afterClose({ ...base, phase: 'resuming' }), 'resume', 'a failed resume attempt tries again');
  assert.equal(afterClose({ ...base, explained: true }), 'explained', 'a Kick is never resumed');
  assert.equal(afterClose({ ...base, explained: true, loggedOut: true }), 'logged-out');
  assert.equal(afterClose({ ...base, leaving: true }), 'logged-out', 'after asking to leave, any close is the end');
  assert.equal(afterClose({ ...base, code: 1008 }), 'token-refused');
  assert.equal(afterClose({ ...base, hasResumeToken: false }), 'ended', 'no token, no resume');
  assert.equal(afterClose({ ...base, phase: 'connecting', hasResumeToken: false }), 'back-to-login');
  assert.equal(afterClose({ ...base, phase: 'connecting', explained: true }), 'explained', 'a LoginError then close');
});
