#!/usr/bin/env node
// Writes the ABI (only) of each protocol contract lpworker calls from the
// @livepeer/sdk Hardhat artifacts into src/chain/abi/, where the `sol!`
// bindings read them at build time. Run after changing the sdk version:
//   (cd tests/chain && npm ci && node extract-abi.js)
"use strict";
const fs = require("fs");
const path = require("path");

const root = path.join(path.dirname(require.resolve("@livepeer/sdk/package.json")), "abis");
const out = path.join(__dirname, "..", "..", "src", "chain", "abi");
const wanted = {
  Controller: "Controller.sol/Controller.json",
  BondingManager: "bonding/BondingManager.sol/BondingManager.json",
  RoundsManager: "rounds/RoundsManager.sol/RoundsManager.json",
  TicketBroker: "pm/TicketBroker.sol/TicketBroker.json",
  ServiceRegistry: "ServiceRegistry.sol/ServiceRegistry.json",
  Minter: "token/Minter.sol/Minter.json",
  LivepeerToken: "token/LivepeerToken.sol/LivepeerToken.json",
};
fs.mkdirSync(out, { recursive: true });
for (const [name, rel] of Object.entries(wanted)) {
  const { abi } = JSON.parse(fs.readFileSync(path.join(root, rel)));
  fs.writeFileSync(path.join(out, `${name}.json`), JSON.stringify(abi, null, 1) + "\n");
  console.log(`${name}: ${abi.length} entries`);
}
