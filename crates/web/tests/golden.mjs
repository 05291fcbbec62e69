// Run the wasm golden-hash export and print "<hash> <kernel>".
// Usage: node golden.mjs path/to/odin_web.wasm
import { readFileSync } from "node:fs";

const bytes = readFileSync(process.argv[2]);
const imports = { odin: { entropy: (ptr, len) => crypto.getRandomValues(new Uint8Array(instance.exports.memory.buffer, ptr, len)) } };
const { instance } = await WebAssembly.instantiate(bytes, imports);
const { golden, buffer, memory } = instance.exports;
const ptr = buffer();
const n = golden(ptr);
if (n === 0) {
  console.error("golden() failed inside wasm");
  process.exit(1);
}
const view = new Uint8Array(memory.buffer, ptr, 64 + n);
const text = new TextDecoder().decode(view);
console.log(`${text.slice(0, 64)} ${text.slice(64)}`);
