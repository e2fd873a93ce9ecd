// Builds the static client into one directory (default dist/): index.html, app.js, style.css.
//
//   node tools/build.mjs [--outdir DIR] [--skip-gen]
//
// Steps: generate the protobuf code from ../proto/realm.proto, type-check, bundle src/main.ts with esbuild into one
// minified IIFE, copy the static files. The output depends only on the sources and the versions pinned in
// package-lock.json (no timestamps, no absolute paths, no hashes of the machine), so `scripts/web.sh check` can
// rebuild it and compare byte for byte with the committed dist/.
import { execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { noWasmInLong } from './esbuild-plugins.mjs';

const web = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const outIdx = args.indexOf('--outdir');
const outdir = resolve(outIdx >= 0 ? args[outIdx + 1] : join(web, 'dist'));

if (!args.includes('--skip-gen')) {
  execFileSync(process.execPath, [join(web, 'tools', 'gen-proto.mjs')], { stdio: 'inherit' });
}
execFileSync(join(web, 'node_modules', '.bin', 'tsc'), ['--noEmit', '-p', web], { stdio: 'inherit', cwd: web });

// Only our three files: a stale file left in dist/ would otherwise be committed and never served.
rmSync(outdir, { recursive: true, force: true });
mkdirSync(outdir, { recursive: true });

const result = await esbuild.build({
  absWorkingDir: web,
  entryPoints: ['src/main.ts'],
  outfile: join(outdir, 'app.js'),
  bundle: true,
  format: 'iife',
  platform: 'browser',
  target: 'es2020',
  minify: true,
  sourcemap: false,
  // The licences of bundled libraries (protobufjs, long) stay in the bundle, at its end.
  legalComments: 'eof',
  charset: 'utf8',
  logLevel: 'warning',
  metafile: true,
  plugins: [noWasmInLong],
});
if (result.errors.length > 0) process.exit(1);

copyFileSync(join(web, 'static', 'index.html'), join(outdir, 'index.html'));
copyFileSync(join(web, 'static', 'style.css'), join(outdir, 'style.css'));

const files = readdirSync(outdir).sort();
const bytes = Object.fromEntries(
  Object.entries(result.metafile.outputs).map(([k, v]) => [k.split('/').pop(), v.bytes]),
);
console.log(`built ${outdir}: ${files.join(', ')} (app.js ${bytes['app.js']} bytes)`);
