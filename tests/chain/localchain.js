#!/usr/bin/env node
// A local Livepeer chain for lpworker's tests: ganache (offline, in process)
// hosting the real protocol contracts from the Hardhat artifacts that npm
// `@livepeer/sdk` ships, deployed the way the protocol deploys them: each
// managed contract behind a ManagerProxy, every address registered in a
// Controller.
//
// Prints one JSON line when ready:
//   {"rpc": "http://127.0.0.1:PORT", "chainId": N, "controller": "0x..",
//    "contracts": {"BondingManager": "0x..", ...},
//    "accounts": [{"address": "0x..", "privateKey": "0x.."}, ...],
//    "params": {...}}
// then answers commands on stdin, one per line, one JSON line each:
//   upgrade NAME                 deploy a new implementation and a new proxy
//                                and point NAME at it (a contract upgrade)
//   keystore INDEX DIR PASSWORD  write account INDEX as a V3 keystore file
//                                in DIR (go-ethereum's file naming)
//   deployPriceFeed DECIMALS ANSWER
//                                deploy a Chainlink MockV3Aggregator (from
//                                @chainlink/contracts) answering ANSWER with
//                                DECIMALS decimals, and an EthUsdFeed
//                                (contracts/EthUsdFeed.sol) reading it, which
//                                describes itself "ETH / USD" as the real feed
//                                does (the bare aggregator does not: it stands
//                                for a wrong feed) -> {aggregator, feed,
//                                roundId, answer, updatedAt}
//   setPrice AGGREGATOR ANSWER [UPDATED_AT]
//                                a new round on that aggregator answering
//                                ANSWER, updated now (updateAnswer) or at
//                                UPDATED_AT, unix seconds (updateRoundData),
//                                e.g. long ago for a stale reading
//                                -> {aggregator, roundId, answer, updatedAt}
// The Solidity is compiled with solc-js on first use and cached under
// node_modules/.cache, so a chain that never deploys a feed starts as fast.
// Options: --round-length=N --round-lock-amount=PPM --active-transcoders=N
//   --ticket-validity=ROUNDS --gas-price=WEI
// and exits when stdin closes, so a test that dies never leaks a chain.
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const net = require("net");
const path = require("path");
const readline = require("readline");
const ganache = require("ganache");
const { ethers } = require("ethers");

const ARTIFACTS = path.join(path.dirname(require.resolve("@livepeer/sdk/package.json")), "abis");

const args = Object.fromEntries(
  process.argv.slice(2).map((a) => {
    const [k, v] = a.replace(/^--/, "").split("=");
    return [k, v === undefined ? "true" : v];
  }),
);
const PARAMS = {
  roundLength: Number(args["round-length"] || 20),
  // Parts per million of the round during which transcoder() is refused.
  roundLockAmount: Number(args["round-lock-amount"] || 100000),
  unbondingPeriod: 2,
  numActiveTranscoders: Number(args["active-transcoders"] || 2),
  unlockPeriod: 2,
  ticketValidityPeriod: Number(args["ticket-validity"] || 2),
  // Minter inflation in parts per billion per round.
  inflation: 1000000,
  inflationChange: 3,
  targetBondingRate: 500000000,
};

function artifact(rel) {
  return JSON.parse(fs.readFileSync(path.join(ARTIFACTS, rel)));
}

const A = {
  Controller: artifact("Controller.sol/Controller.json"),
  ManagerProxy: artifact("ManagerProxy.sol/ManagerProxy.json"),
  SortedDoublyLL: artifact("libraries/SortedDoublyLL.sol/SortedDoublyLL.json"),
  BondingManager: artifact("bonding/BondingManager.sol/BondingManager.json"),
  RoundsManager: artifact("rounds/RoundsManager.sol/RoundsManager.json"),
  TicketBroker: artifact("pm/TicketBroker.sol/TicketBroker.json"),
  ServiceRegistry: artifact("ServiceRegistry.sol/ServiceRegistry.json"),
  Minter: artifact("token/Minter.sol/Minter.json"),
  LivepeerToken: artifact("token/LivepeerToken.sol/LivepeerToken.json"),
};

// Our test contracts (contracts/*.sol) and the Chainlink ones they use.
const CONTRACTS = path.join(__dirname, "contracts");
const CHAINLINK = "@chainlink/contracts/";
const MOCK_V3_AGGREGATOR = CHAINLINK + "src/v0.8/shared/mocks/MockV3Aggregator.sol";

function readSource(name) {
  if (name.startsWith(CHAINLINK)) {
    const root = path.dirname(require.resolve(CHAINLINK + "package.json"));
    return fs.readFileSync(path.join(root, name.slice(CHAINLINK.length)), "utf8");
  }
  return fs.readFileSync(path.join(CONTRACTS, name), "utf8");
}

// {EthUsdFeed, MockV3Aggregator}: {abi, bytecode}. Compiling takes solc-js
// about 1.5 s (loading the compiler included), so the artifacts are cached,
// keyed by the compiler, the Chainlink package and every input.
let compiled = null;
function solidity() {
  if (compiled) return compiled;
  const input = {
    language: "Solidity",
    sources: {
      "EthUsdFeed.sol": { content: readSource("EthUsdFeed.sol") },
      [MOCK_V3_AGGREGATOR]: { content: readSource(MOCK_V3_AGGREGATOR) },
    },
    settings: {
      // ganache 7.9 runs Shanghai; newer compilers default to later forks
      // whose opcodes (MCOPY) it does not know.
      evmVersion: "shanghai",
      outputSelection: { "*": { "*": ["abi", "evm.bytecode.object"] } },
    },
  };
  const version = (pkg) => require(pkg + "/package.json").version;
  const key = crypto
    .createHash("sha256")
    .update(JSON.stringify([version("solc"), version("@chainlink/contracts"), input]))
    .digest("hex")
    .slice(0, 16);
  const cacheDir = path.join(__dirname, "node_modules", ".cache", "lpworker-localchain");
  const cacheFile = path.join(cacheDir, `solidity-${key}.json`);
  try {
    compiled = JSON.parse(fs.readFileSync(cacheFile, "utf8"));
    return compiled;
  } catch (_) {
    // Not compiled yet (or a torn file): compile below.
  }
  const solc = require("solc");
  const findImports = (name) => {
    try {
      return { contents: readSource(name) };
    } catch (e) {
      return { error: `${name}: ${e.message}` };
    }
  };
  const out = JSON.parse(solc.compile(JSON.stringify(input), { import: findImports }));
  const errors = (out.errors || []).filter((e) => e.severity === "error");
  if (errors.length) throw new Error("solc: " + errors.map((e) => e.formattedMessage).join("\n"));
  const pick = (file, name) => {
    const c = out.contracts[file][name];
    return { abi: c.abi, bytecode: "0x" + c.evm.bytecode.object };
  };
  compiled = {
    EthUsdFeed: pick("EthUsdFeed.sol", "EthUsdFeed"),
    MockV3Aggregator: pick(MOCK_V3_AGGREGATOR, "MockV3Aggregator"),
  };
  // Chains start in parallel: write aside, then rename into place.
  fs.mkdirSync(cacheDir, { recursive: true });
  const tmp = `${cacheFile}.${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(compiled));
  fs.renameSync(tmp, cacheFile);
  return compiled;
}

const id = (name) => ethers.keccak256(ethers.toUtf8Bytes(name));
const NO_COMMIT = "0x" + "00".repeat(20);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// Splices deployed library addresses into creation bytecode at the offsets
// the artifact's linkReferences name.
function link(art, libs) {
  let code = art.bytecode.slice(2);
  for (const [file, names] of Object.entries(art.linkReferences || {})) {
    for (const [name, refs] of Object.entries(names)) {
      const addr = libs[name];
      if (!addr) throw new Error(`no address to link ${file}:${name}`);
      for (const { start, length } of refs) {
        code = code.slice(0, start * 2) + addr.slice(2).toLowerCase() + code.slice((start + length) * 2);
      }
    }
  }
  return "0x" + code;
}

async function main() {
  const port = await freePort();
  const server = ganache.server({
    logging: { quiet: true },
    wallet: { deterministic: true, totalAccounts: 10, defaultBalance: 1000 },
    chain: { chainId: 1337 },
    // --gas-price=WEI sets what eth_gasPrice answers (ganache's default is
    // 2 gwei), so tests can price redemptions low or raise it mid-test
    // with miner_setGasPrice.
    miner: { instamine: "eager", ...(args["gas-price"] ? { defaultGasPrice: BigInt(args["gas-price"]) } : {}) },
  });
  await server.listen(port, "127.0.0.1");
  const rpc = `http://127.0.0.1:${port}`;

  const provider = new ethers.JsonRpcProvider(rpc, undefined, { staticNetwork: true, polling: false, cacheTimeout: -1 });
  const initial = server.provider.getInitialAccounts();
  const accounts = Object.entries(initial).map(([address, a]) => ({
    address: ethers.getAddress(address),
    privateKey: a.secretKey,
  }));
  const deployer = new ethers.NonceManager(new ethers.Wallet(accounts[0].privateKey, provider));

  async function deploy(art, bytecode, ...ctorArgs) {
    const factory = new ethers.ContractFactory(art.abi, bytecode || art.bytecode, deployer);
    const c = await factory.deploy(...ctorArgs);
    await c.waitForDeployment();
    return c;
  }
  async function send(txPromise) {
    const tx = await txPromise;
    const receipt = await tx.wait();
    if (receipt.status !== 1) throw new Error("transaction reverted");
    return receipt;
  }

  const controller = await deploy(A.Controller);
  const controllerAddr = await controller.getAddress();
  const contracts = {};

  // A managed contract: implementation registered as NAME+"Target", proxy
  // registered as NAME; callers always talk to the proxy.
  async function deployManaged(name, bytecode) {
    const impl = await deploy(A[name], bytecode, controllerAddr);
    await send(controller.setContractInfo(id(name + "Target"), await impl.getAddress(), NO_COMMIT));
    const proxy = await deploy(A.ManagerProxy, null, controllerAddr, id(name + "Target"));
    const proxyAddr = await proxy.getAddress();
    await send(controller.setContractInfo(id(name), proxyAddr, NO_COMMIT));
    contracts[name] = proxyAddr;
    return new ethers.Contract(proxyAddr, A[name].abi, deployer);
  }

  const token = await deploy(A.LivepeerToken);
  contracts.LivepeerToken = await token.getAddress();
  await send(controller.setContractInfo(id("LivepeerToken"), contracts.LivepeerToken, NO_COMMIT));

  const sorted = await deploy(A.SortedDoublyLL);
  const bondingCode = link(A.BondingManager, { SortedDoublyLL: await sorted.getAddress() });
  const bonding = await deployManaged("BondingManager", bondingCode);
  const rounds = await deployManaged("RoundsManager");
  const broker = await deployManaged("TicketBroker");
  await deployManaged("ServiceRegistry");
  // The Minter takes ETH only from contracts registered as Minter or
  // JobsManager (TicketBroker's legacy name).
  await send(controller.setContractInfo(id("JobsManager"), contracts.TicketBroker, NO_COMMIT));

  const minter = await deploy(
    A.Minter,
    null,
    controllerAddr,
    PARAMS.inflation,
    PARAMS.inflationChange,
    PARAMS.targetBondingRate,
  );
  contracts.Minter = await minter.getAddress();
  await send(controller.setContractInfo(id("Minter"), contracts.Minter, NO_COMMIT));

  // The Arbitrum Minter reads L1 circulating supply from L2LPTDataCache,
  // which the artifacts do not ship: a contract whose every call returns a
  // 32-byte zero stands in (runtime PUSH1 0 PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN).
  const zeroReturner = await deployer.sendTransaction({ data: "0x69600060005260206000f3600052600a6016f3" });
  const zeroReceipt = await zeroReturner.wait();
  contracts.L2LPTDataCache = zeroReceipt.contractAddress;
  await send(controller.setContractInfo(id("L2LPTDataCache"), contracts.L2LPTDataCache, NO_COMMIT));

  const MINTER_ROLE = id("MINTER_ROLE");
  await send(token.grantRole(MINTER_ROLE, contracts.Minter));
  await send(token.grantRole(MINTER_ROLE, accounts[0].address));

  await send(rounds.setRoundLength(PARAMS.roundLength));
  await send(rounds.setRoundLockAmount(PARAMS.roundLockAmount));
  await send(bonding.setUnbondingPeriod(PARAMS.unbondingPeriod));
  await send(bonding.setNumActiveTranscoders(PARAMS.numActiveTranscoders));
  await send(broker.setUnlockPeriod(PARAMS.unlockPeriod));
  await send(broker.setTicketValidityPeriod(PARAMS.ticketValidityPeriod));
  await send(controller.unpause());

  // Test LPT for every account but the deployer.
  const lpt = ethers.parseEther("10000");
  for (const a of accounts.slice(1)) await send(token.mint(a.address, lpt));

  process.stdout.write(
    JSON.stringify({ rpc, chainId: 1337, controller: controllerAddr, contracts, accounts, params: PARAMS }) + "\n",
  );

  // An aggregator's latestRoundData(), JSON-safe.
  async function latestRound(aggregator) {
    const r = await aggregator.latestRoundData();
    return { roundId: Number(r.roundId), answer: r.answer.toString(), updatedAt: Number(r.updatedAt) };
  }

  async function command(line) {
    const [cmd, ...rest] = line.trim().split(/\s+/);
    if (cmd === "upgrade") {
      const [name] = rest;
      if (!A[name] || name === "Controller" || name === "ManagerProxy") throw new Error(`cannot upgrade ${name}`);
      // A fresh implementation under a fresh target id and a fresh proxy:
      // the old proxy keeps pointing at the old target, so only a node that
      // resolves NAME through the Controller again reaches the new one.
      const code = name === "BondingManager" ? bondingCode : A[name].bytecode;
      const impl = await deploy(A[name], code, controllerAddr);
      const target = name + "Target2";
      await send(controller.setContractInfo(id(target), await impl.getAddress(), NO_COMMIT));
      const proxy = await deploy(A.ManagerProxy, null, controllerAddr, id(target));
      const addr = await proxy.getAddress();
      await send(controller.setContractInfo(id(name), addr, NO_COMMIT));
      if (name === "TicketBroker") {
        await send(controller.setContractInfo(id("JobsManager"), addr, NO_COMMIT));
        const b = new ethers.Contract(addr, A.TicketBroker.abi, deployer);
        await send(b.setUnlockPeriod(PARAMS.unlockPeriod));
        await send(b.setTicketValidityPeriod(PARAMS.ticketValidityPeriod));
      }
      contracts[name] = addr;
      return { upgraded: name, address: addr };
    }
    if (cmd === "keystore") {
      const [index, dir, password] = rest;
      const a = accounts[Number(index)];
      if (!a) throw new Error(`no account ${index}`);
      // A low scrypt cost keeps the test fast; the file format is the same.
      const json = await ethers.encryptKeystoreJson(
        { address: a.address, privateKey: a.privateKey },
        password,
        { scrypt: { N: 1 << 12 } },
      );
      const stamp = new Date().toISOString().replace(/:/g, "-");
      const file = path.join(dir, `UTC--${stamp}--${a.address.slice(2).toLowerCase()}`);
      fs.mkdirSync(dir, { recursive: true });
      fs.writeFileSync(file, json);
      return { keystore: file, address: a.address };
    }
    if (cmd === "deployPriceFeed") {
      const [decimals, answer] = rest;
      if (answer === undefined) throw new Error("usage: deployPriceFeed DECIMALS ANSWER");
      const S = solidity();
      const aggregator = await deploy(S.MockV3Aggregator, null, Number(decimals), BigInt(answer));
      const aggregatorAddr = await aggregator.getAddress();
      const feed = await deploy(S.EthUsdFeed, null, aggregatorAddr);
      return { aggregator: aggregatorAddr, feed: await feed.getAddress(), ...(await latestRound(aggregator)) };
    }
    if (cmd === "setPrice") {
      const [addr, answer, updatedAt] = rest;
      if (answer === undefined) throw new Error("usage: setPrice AGGREGATOR ANSWER [UPDATED_AT]");
      const aggregator = new ethers.Contract(addr, solidity().MockV3Aggregator.abi, deployer);
      // Gas given: ganache's estimate for these first-time storage writes
      // can come out short, and the update then reverts out of gas.
      const gas = { gasLimit: 500000 };
      if (updatedAt === undefined) {
        await send(aggregator.updateAnswer(BigInt(answer), gas));
      } else {
        // A new round (as the real feed's rounds only go up) whose
        // timestamps are the given ones.
        const round = (await aggregator.latestRound()) + 1n;
        await send(aggregator.updateRoundData(round, BigInt(answer), BigInt(updatedAt), BigInt(updatedAt), gas));
      }
      return { aggregator: addr, ...(await latestRound(aggregator)) };
    }
    throw new Error(`unknown command: ${line}`);
  }

  // Commands run one at a time, in order.
  let queue = Promise.resolve();
  const rl = readline.createInterface({ input: process.stdin });
  rl.on("line", (line) => {
    if (!line.trim()) return;
    queue = queue.then(async () => {
      let reply;
      try {
        reply = await command(line);
      } catch (e) {
        reply = { error: String(e && e.message ? e.message : e) };
      }
      process.stdout.write(JSON.stringify(reply) + "\n");
    });
  });
  rl.on("close", async () => {
    await queue;
    await server.close();
    process.exit(0);
  });
}

main().catch((e) => {
  process.stderr.write(`localchain: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
