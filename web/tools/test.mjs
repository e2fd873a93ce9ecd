// Runs the unit tests (test/*.test.ts) with node's built-in test runner. esbuild bundles each test file with the
// code it imports (TypeScript and the generated protobuf module) into .test-build/, then `node --test` runs them.
import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(web, '.test-build');
rmSync(out, { recursive: true, force: true });
const tests = readdirSync(join(web, 'test')).filter((f) => f.endsWith('.test.ts')).sort();
await esbuild.build({
  absWorkingDir: web,
  entryPoints: tests.map((f) => join('test', f)),
  outdir: out,
  outExtension: { '.js': '.mjs' },
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  packages: 'bundle',
  logLevel: 'warning',
  // protobufjs is CommonJS: give the ESM bundle a `require` for node built-ins it probes.
  banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
});
const files = readdirSync(out).filter((f) => f.endsWith('.mjs')).sort().map((f) => join(out, f));
const r = spawnSync(process.execPath, ['--test', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
