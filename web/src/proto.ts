// The wire format: `realm.v1` from ../proto/realm.proto, through the code protobufjs-cli generates at build time
// (src/gen/, not committed). Every WebSocket message, both ways, is exactly one binary `WsFrame`.
//
// 64-bit fields: protobufjs decodes them as `Long` (long.js is bundled), so a `uint64` nonce the server picks at
// random is echoed bit for bit. Ids and ticks are turned into JS numbers with `num()` for maps and arithmetic:
// they stay far below 2^53 in practice, and a lossy id would only mis-draw, never be sent back as a nonce. The delta
// decoder (delta.ts) needs exact u64 arithmetic on ids and ticks: it works in `bigint` (`big()`) and hands ids back
// as unsigned `Long`s (`longOf()`), exactly what protobufjs gives for a v1 snapshot's ids.

import type LongClass from 'long';
import $protobuf from 'protobufjs/minimal.js';
import { realm } from './gen/realm.js';

// The Long class protobufjs itself loaded (long's CommonJS build): importing 'long' here would bundle its ES module
// build as a second copy.
type Long = LongClass;
const Long = $protobuf.util.Long as unknown as typeof LongClass;
if (!Long) throw new Error('protobufjs found no Long class: 64-bit fields would lose precision');

export const pb = realm.v1;
export type Long64 = Long;
export type U64 = number | Long | null | undefined;

export type WsFrame = realm.v1.WsFrame;
export type WsFrameInit = realm.v1.WsFrame.$Properties;
export type ControlMessage = realm.v1.ControlMessage.$Properties;
export type DataMessage = realm.v1.DataMessage.$Properties;
export type LoginOk = realm.v1.LoginOk.$Properties;
export type Snapshot = realm.v1.Snapshot.$Properties;
export type DeltaSnapshot = realm.v1.DeltaSnapshot.$Properties;
export type EntityState = realm.v1.EntityState.$Properties;
export type ChatMessage = realm.v1.ChatMessage.$Properties;
export type ChatRefused = realm.v1.ChatRefused.$Properties;
export type CombatEvent = realm.v1.CombatEvent.$Properties;
export type PlayerStats = realm.v1.PlayerStats.$Properties;
export type LootReceived = realm.v1.LootReceived.$Properties;
export type ZoneTransfer = realm.v1.ZoneTransfer.$Properties;
export type Kick = realm.v1.Kick.$Properties;
export type LoginError = realm.v1.LoginError.$Properties;
export type InputInit = realm.v1.Input.$Properties;

export const LoginErrorReason = pb.LoginErrorReason;
export const KickReason = pb.KickReason;
export const ChatChannel = pb.ChatChannel;
export const ChatRefusedReason = pb.ChatRefusedReason;
export const CombatEventKind = pb.CombatEventKind;
export const EntityKind = pb.EntityKind;

/** Encodes one frame for `WebSocket.send`. */
export function encodeFrame(frame: WsFrameInit): Uint8Array {
  return pb.WsFrame.encode(frame).finish();
}

/** Decodes one received WebSocket message; throws on bytes that are not a `WsFrame`. */
export function decodeFrame(bytes: ArrayBuffer | Uint8Array): WsFrame {
  return pb.WsFrame.decode(bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes));
}

/** A 64-bit field as a JS number (0 when absent). */
export function num(v: U64): number {
  if (v === null || v === undefined) return 0;
  return typeof v === 'number' ? v : Long.fromValue(v).toNumber();
}

/** A JS number as an unsigned 64-bit value for the encoder (exact up to 2^53). */
export function u64(n: number): Long {
  return Long.fromNumber(Math.max(0, Math.floor(n)), true);
}

/** A 64-bit field as an exact unsigned `bigint` (0 when absent; a signed `Long` is read as its 64 bits). */
export function big(v: U64): bigint {
  if (v === null || v === undefined) return 0n;
  if (typeof v === 'number') return BigInt.asUintN(64, BigInt(Math.trunc(v)));
  return (BigInt(v.high >>> 0) << 32n) | BigInt(v.low >>> 0);
}

/** An unsigned 64-bit value (taken modulo 2^64) as the unsigned `Long` protobufjs decodes a `uint64` into. */
export function longOf(v: bigint): Long {
  const b = BigInt.asUintN(64, v);
  return Long.fromBits(Number(b & 0xffffffffn) | 0, Number(b >> 32n) | 0, true);
}

/** Unpadded base64url (RFC 4648 section 5), the encoding of tokens in /ws query strings. */
export function base64url(bytes: Uint8Array): string {
  let bin = '';
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** The inverse of `base64url` (accepts padding too). */
export function fromBase64url(text: string): Uint8Array {
  const b64 = text.replace(/-/g, '+').replace(/_/g, '/');
  const bin = atob(b64 + '='.repeat((4 - (b64.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** The enum value name of `LoginErrorReason` (e.g. "LOGIN_ERROR_INVALID_CREDENTIALS"), or the number as text. */
export function loginErrorName(reason: number): string {
  return (pb.LoginErrorReason as unknown as Record<number, string>)[reason] ?? String(reason);
}

/** The `LoginErrorReason` value of a name in an HTTP error body; undefined when the name is not in the schema. */
export function loginErrorValue(name: string): number | undefined {
  const v = (pb.LoginErrorReason as unknown as Record<string, number>)[name];
  return typeof v === 'number' ? v : undefined;
}

/** The enum value name of `KickReason`. */
export function kickName(reason: number): string {
  return (pb.KickReason as unknown as Record<number, string>)[reason] ?? String(reason);
}
