#!/usr/bin/env node
// Rebuilds artifacts.json (ABI + creation bytecode of every contract in contracts/) with
// solc-js from npm: `npm install` at the repository root, then `node tests/chain/build.js`.
"use strict";
const fs = require("fs");
const path = require("path");
const solc = require("solc");

const here = __dirname;
const dir = path.join(here, "contracts");
const sources = {};
for (const file of fs.readdirSync(dir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: fs.readFileSync(path.join(dir, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "prague",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
for (const e of output.errors || []) console.error(e.formattedMessage);
if (errors.length) process.exit(1);
const artifacts = { compiler: solc.version(), evmVersion: "prague", contracts: {} };
for (const file of Object.keys(output.contracts).sort()) {
  for (const [name, c] of Object.entries(output.contracts[file])) {
    if (!c.evm.bytecode.object) continue; // interfaces
    artifacts.contracts[name] = { source: file, abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
  }
}
fs.writeFileSync(path.join(here, "artifacts.json"), JSON.stringify(artifacts, null, 1) + "\n");
console.log(`wrote ${Object.keys(artifacts.contracts).length} contracts to tests/chain/artifacts.json (solc ${solc.version()})`);
