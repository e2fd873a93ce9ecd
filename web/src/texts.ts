// Human text for every way the server can refuse or end a session. Keyed by the enum *names* of realm.proto, which
// is also what the HTTP API puts in `reason`, so one table serves both the JSON errors and the WsFrame messages.

import { ChatRefusedReason, kickName, loginErrorName } from './proto.js';

export const LOGIN_ERROR_TEXT: Record<string, string> = {
  LOGIN_ERROR_UNSPECIFIED: 'The server refused the login without saying why.',
  LOGIN_ERROR_INVALID_CREDENTIALS: 'Wrong username or password.',
  LOGIN_ERROR_USERNAME_TAKEN: 'That username is taken: choose another one, or log in if it is yours.',
  LOGIN_ERROR_INVALID_USERNAME: 'Usernames are 3 to 32 characters: letters, digits, _ and -.',
  LOGIN_ERROR_WEAK_PASSWORD: 'Passwords need 8 to 128 characters.',
  LOGIN_ERROR_LOCKED_OUT: 'Too many failed logins: this account or address is locked for a while.',
  LOGIN_ERROR_BANNED: 'This account is banned.',
  LOGIN_ERROR_ALREADY_ONLINE: 'This character is already in the game (another session or zone holds it).',
  LOGIN_ERROR_SERVER_FULL: 'The zone is full. Try again later.',
  LOGIN_ERROR_SERVER_BUSY: 'The server is busy. Try again in a moment.',
  LOGIN_ERROR_INVALID_TRANSFER: 'The zone transfer was refused (its ticket expired or was already used). Log in again.',
  LOGIN_ERROR_PROTOCOL_VERSION: 'This client is out of date: reload the page.',
  LOGIN_ERROR_RATE_LIMITED: 'Too many new accounts from this address. Try again later.',
  LOGIN_ERROR_INVALID_RESUME: 'Your session could not be resumed: log in again.',
  LOGIN_ERROR_INVALID_TOKEN: 'Your login expired before the game opened (or was already used): log in again.',
};

export const KICK_TEXT: Record<string, string> = {
  KICK_REASON_UNSPECIFIED: 'The server closed the session.',
  KICK_REASON_PROTOCOL_ERROR: 'The server did not understand this client (protocol error).',
  KICK_REASON_FLOOD: 'Disconnected for sending too many messages.',
  KICK_REASON_SLOW_CONSUMER: 'Disconnected: the connection could not keep up with the game.',
  KICK_REASON_IDLE_TIMEOUT: 'Disconnected after being idle too long.',
  KICK_REASON_SERVER_SHUTDOWN: 'The server is shutting down. Your progress was saved.',
  KICK_REASON_OWNERSHIP_LOST: 'Your character is now played from another zone or session.',
  KICK_REASON_SAVE_FAILED: 'The server could not save your progress, so it stopped the session to protect it.',
  KICK_REASON_CHEAT_DETECTED: 'Disconnected: the server detected impossible actions.',
  KICK_REASON_DUPLICATE_LOGIN: 'You logged in from somewhere else.',
  KICK_REASON_BANNED: 'This account has been banned.',
  KICK_REASON_LOGIN_TIMEOUT: 'The login took too long.',
  KICK_REASON_LOGIN_ATTEMPTS: 'Too many login attempts on one connection.',
  KICK_REASON_CONNECTION_LIMIT: 'The server is full of connections. Try again.',
  KICK_REASON_LOGGED_OUT: 'You logged out. Your progress was saved.',
};

/** Login errors for which retrying the same request later may succeed (`retry_after_ms` applies). */
const RETRYABLE = new Set([
  'LOGIN_ERROR_LOCKED_OUT',
  'LOGIN_ERROR_SERVER_BUSY',
  'LOGIN_ERROR_SERVER_FULL',
  'LOGIN_ERROR_RATE_LIMITED',
]);

function retryHint(name: string, retryAfterMs: number): string {
  if (!RETRYABLE.has(name) || retryAfterMs <= 0) return '';
  const secs = Math.ceil(retryAfterMs / 1000);
  return secs >= 120 ? ` (retry in ${Math.ceil(secs / 60)} min)` : ` (retry in ${secs} s)`;
}

/** Text for a LoginErrorReason, given as its name (HTTP body) or number (WsFrame). */
export function loginErrorText(reason: string | number, retryAfterMs = 0): string {
  const name = typeof reason === 'number' ? loginErrorName(reason) : reason;
  const text = LOGIN_ERROR_TEXT[name] ?? `The server refused the login (${name}).`;
  return text + retryHint(name, retryAfterMs);
}

/** Text for a KickReason number. */
export function kickText(reason: number): string {
  const name = kickName(reason);
  return KICK_TEXT[name] ?? `Disconnected by the server (${name}).`;
}

/**
 * The LoginErrorReason name for an HTTP error without a usable JSON body (a proxy's page, a crash): what the status
 * means in the API contract.
 */
export function reasonForHttpStatus(status: number): string {
  switch (status) {
    case 401:
      return 'LOGIN_ERROR_INVALID_CREDENTIALS';
    case 403:
      return 'LOGIN_ERROR_LOCKED_OUT';
    case 409:
      return 'LOGIN_ERROR_USERNAME_TAKEN';
    case 429:
      return 'LOGIN_ERROR_RATE_LIMITED';
    case 503:
      return 'LOGIN_ERROR_SERVER_BUSY';
    default:
      return 'LOGIN_ERROR_UNSPECIFIED';
  }
}

/** Text for a WebSocket close that came without a Kick (codes of RFC 6455 and the gateway's contract). */
export function closeText(code: number, reason: string): string {
  const why = reason ? `: ${reason}` : '';
  switch (code) {
    case 1000:
      return `The server closed the connection${why}.`;
    case 1008:
      return `The server refused the connection (login token invalid or expired)${why}. Log in again.`;
    case 1009:
      return `The server closed the connection: a message was too big${why}.`;
    case 1011:
      return `The server hit an internal error${why}.`;
    default:
      return `The connection was lost (code ${code})${why}.`;
  }
}

/** Text for a ChatRefused. */
export function chatRefusedText(reason: number, retryAfterMs: number): string {
  const wait = retryAfterMs > 0 ? ` Wait ${(retryAfterMs / 1000).toFixed(1)} s.` : '';
  if (reason === ChatRefusedReason.CHAT_REFUSED_SENDER_RATE) return `You are chatting too fast; not sent.${wait}`;
  if (reason === ChatRefusedReason.CHAT_REFUSED_ZONE_FANOUT) return `The zone chat is overloaded; not sent.${wait}`;
  return `Your message was not sent.${wait}`;
}
