// esbuild plugins shared by the bundle (build.mjs) and the smoke fixture (screenshot.mjs).
import { readFileSync } from 'node:fs';

// long.js (protobufjs's 64-bit integers) instantiates a tiny WebAssembly module at load for faster multiplication,
// inside a try/catch that falls back to plain JS. Under the gateway's CSP (no 'wasm-unsafe-eval') the browser blocks
// it and reports a CSP violation on every page load. The client multiplies no 64-bit numbers, so the bundle takes
// the fallback directly. The build fails if long.js changes so that the patch no longer applies.
export const noWasmInLong = {
  name: 'no-wasm-in-long',
  setup(build) {
    build.onLoad({ filter: /[\\/]node_modules[\\/]long[\\/](umd[\\/])?index\.js$/ }, (args) => {
      const source = readFileSync(args.path, 'utf8');
      const marker = 'wasm = new WebAssembly.Instance(';
      if (!source.includes(marker)) throw new Error(`${args.path}: "${marker}" not found; revisit the no-wasm patch`);
      // The module's bytes become an arrow function that is never called, so nothing is compiled.
      const patched = source.replace(marker, 'wasm = ((neverCompiled) => { throw new Error("no wasm under the CSP"); })(() => ');
      return { contents: patched, loader: 'js' };
    });
  },
};
