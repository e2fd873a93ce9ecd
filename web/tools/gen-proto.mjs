// Generates src/gen/realm.js (protobufjs static code) and src/gen/realm.d.ts (its types) from ../proto/realm.proto.
// The output is a pure function of the schema and the pinned protobufjs-cli version, so the bundle stays reproducible.
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const web = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(web, 'node_modules', '.bin', name);
const gen = join(web, 'src', 'gen');
mkdirSync(gen, { recursive: true });

execFileSync(
  bin('pbjs'),
  [
    '-t', 'static-module',
    '-w', 'es6',
    // Only what the client uses: encode/decode, create. No reflection, no JSON conversion, no services.
    '--no-delimited', '--no-verify', '--no-convert', '--no-typeurl', '--no-service',
    '-o', join(gen, 'realm.js'),
    join(web, '..', 'proto', 'realm.proto'),
  ],
  { stdio: 'inherit', cwd: web },
);
execFileSync(bin('pbts'), ['-o', join(gen, 'realm.d.ts'), join(gen, 'realm.js')], { stdio: 'inherit', cwd: web });
