// SPDX-License-Identifier: MIT
pragma solidity ^0.8.0;

import {AggregatorV3Interface} from "@chainlink/contracts/src/v0.8/shared/interfaces/AggregatorV3Interface.sol";

/// @title EthUsdFeed
/// @notice A test stand-in for Chainlink's ETH / USD feed on Arbitrum One
/// (an EACAggregatorProxy): it forwards every read to an aggregator
/// (Chainlink's MockV3Aggregator in lpworker's tests, whose answer a test
/// sets) and describes itself as "ETH / USD", as the real feed does.
/// MockV3Aggregator alone describes itself by its file path, which a node
/// must refuse as a price feed.
contract EthUsdFeed is AggregatorV3Interface {
  AggregatorV3Interface public immutable aggregator;

  constructor(AggregatorV3Interface _aggregator) {
    aggregator = _aggregator;
  }

  function decimals() external view override returns (uint8) {
    return aggregator.decimals();
  }

  function description() external pure override returns (string memory) {
    return "ETH / USD";
  }

  function version() external view override returns (uint256) {
    return aggregator.version();
  }

  function getRoundData(
    uint80 _roundId
  )
    external
    view
    override
    returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
  {
    return aggregator.getRoundData(_roundId);
  }

  function latestRoundData()
    external
    view
    override
    returns (uint80 roundId, int256 answer, uint256 startedAt, uint256 updatedAt, uint80 answeredInRound)
  {
    return aggregator.latestRoundData();
  }
}
