//! Chainlink's ETH / USD price feed, read on chain as go-livepeer reads it
//! (`eth/pricefeed.go`, `eth/watchers/pricefeedwatcher.go` at 176aa415):
//! `latestRoundData()` and `decimals()` of an `AggregatorV3Interface`, the
//! price being `answer / 10^decimals` dollars per ether, and a reading
//! replacing the one kept only when its `updatedAt` is newer.
//!
//! Stricter than go-livepeer, which checks none of this: the feed must
//! describe itself as exactly `ETH / USD`; an answer that is not positive,
//! or a round with no update time, is refused rather than kept (go-livepeer
//! would keep it, and its `big.Rat.Inv` panics on a zero price); the feed
//! is read every minute rather than at every whole UTC hour; and a reading
//! is handed out for pricing only while younger than the caller's limit
//! ([`PriceFeedWatcher::fresh`]), so a feed or node that stopped updating
//! stops new USD-priced work instead of pricing it at an old rate.
//!
//! A limit below the feed's heartbeat refuses a healthy feed in a calm
//! market: Chainlink writes a new round when the price moves past the
//! deviation threshold or when the heartbeat has passed, whichever comes
//! first (24 hours for ETH / USD on Arbitrum One, per data.chain.link).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::providers::Provider;
use alloy::sol;
use alloy_primitives::{address, Address, I256, U256};
use tokio::sync::watch;

use super::client::ChainClient;
use super::ChainError;
use crate::live_runner::price::EthUsd;

/// Chainlink's ETH / USD feed (its proxy) on Arbitrum One, go-livepeer's
/// default `-priceFeedAddr` (cmd/livepeer/starter/starter.go).
pub const ARBITRUM_ONE_ETH_USD_FEED: Address =
    address!("0x639Fe6ab55C921f74e7fac1ee960C0B6293ba612");

/// The only description accepted. go-livepeer accepts any `BASE / QUOTE`
/// with ETH on one side and inverts the price when ETH is the quote; it
/// then needs the runner's currency to be the other side. Runner prices
/// here are in USD only, so the feed must quote ether in dollars, and the
/// exact text leaves no room for a `USD / ETH` feed read the wrong way up,
/// a look-alike such as `stETH / USD`, or a contract that is no feed.
pub const ETH_USD_DESCRIPTION: &str = "ETH / USD";

sol! {
    /// Chainlink's `AggregatorV3Interface`, the part the node reads.
    #[sol(rpc)]
    #[derive(Debug)]
    interface AggregatorV3Interface {
        function decimals() external view returns (uint8);
        function description() external view returns (string memory);
        function version() external view returns (uint256);
        function latestRoundData()
            external
            view
            returns (
                uint80 roundId,
                int256 answer,
                uint256 startedAt,
                uint256 updatedAt,
                uint80 answeredInRound
            );
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PriceFeedError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("no contract at the price feed address {0}")]
    NoContract(Address),
    #[error("{address} is not a Chainlink price feed: description() failed: {reason}")]
    NotAFeed { address: Address, reason: String },
    #[error("price feed {address} describes itself as {found:?}; only an {ETH_USD_DESCRIPTION:?} feed prices USD in ether")]
    WrongFeed { address: Address, found: String },
    #[error("price feed round {round_id} answers {answer}, not a positive price")]
    NotPositive { round_id: u128, answer: I256 },
    #[error("price feed round {round_id} has no update time (an incomplete round)")]
    NoUpdateTime { round_id: u128 },
    #[error("price feed round {round_id} has an update time {updated_at} beyond 64 bits")]
    BadUpdateTime { round_id: u128, updated_at: U256 },
}

impl PriceFeedError {
    /// Whether reading again later may succeed: the node was unreachable,
    /// or the feed's latest round was unusable (a later round replaces it).
    /// A contract that is no ETH / USD feed stays one.
    pub fn is_transient(&self) -> bool {
        match self {
            PriceFeedError::Chain(e) => e.is_transient(),
            PriceFeedError::NoContract(_)
            | PriceFeedError::NotAFeed { .. }
            | PriceFeedError::WrongFeed { .. } => false,
            PriceFeedError::NotPositive { .. }
            | PriceFeedError::NoUpdateTime { .. }
            | PriceFeedError::BadUpdateTime { .. } => true,
        }
    }
}

/// One round of the feed: `answer / 10^decimals` dollars per ether.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// Chainlink's round id (a uint80: phase id above 64 bits of the
    /// aggregator's own round).
    pub round_id: u128,
    /// Always positive.
    pub answer: U256,
    pub decimals: u8,
    /// When the round's answer was written, unix seconds.
    pub updated_at: u64,
}

impl Reading {
    /// Checks what `latestRoundData()` and `decimals()` returned.
    pub fn from_round(
        round_id: u128,
        answer: I256,
        updated_at: U256,
        decimals: u8,
    ) -> Result<Reading, PriceFeedError> {
        if answer <= I256::ZERO {
            return Err(PriceFeedError::NotPositive { round_id, answer });
        }
        if updated_at.is_zero() {
            return Err(PriceFeedError::NoUpdateTime { round_id });
        }
        let updated_at = u64::try_from(updated_at).map_err(|_| PriceFeedError::BadUpdateTime {
            round_id,
            updated_at,
        })?;
        Ok(Reading {
            round_id,
            answer: answer.into_raw(),
            decimals,
            updated_at,
        })
    }

    /// Seconds from the update to `now` (unix seconds); zero for an
    /// update stamped in the future (clocks a little apart).
    pub fn age_at(&self, now: u64) -> u64 {
        now.saturating_sub(self.updated_at)
    }

    /// The reading if it is at most `max_age` old at `now` (unix seconds).
    pub fn check_fresh(&self, max_age: Duration, now: u64) -> Result<&Reading, StaleError> {
        let age = self.age_at(now);
        if age > max_age.as_secs() {
            return Err(StaleError::TooOld {
                updated_at: self.updated_at,
                age_secs: age,
                max_age_secs: max_age.as_secs(),
            });
        }
        Ok(self)
    }

    /// The figure USD prices are converted with.
    pub fn to_eth_usd(&self) -> EthUsd {
        EthUsd {
            answer: self.answer,
            decimals: self.decimals,
        }
    }
}

impl From<&Reading> for EthUsd {
    fn from(r: &Reading) -> EthUsd {
        r.to_eth_usd()
    }
}

/// Why there is no reading fit to price with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StaleError {
    #[error("no ETH / USD reading from the price feed yet")]
    NoReading,
    #[error("the ETH / USD reading is {age_secs} s old (updated at unix {updated_at}); at most {max_age_secs} s is accepted")]
    TooOld {
        updated_at: u64,
        age_secs: u64,
        max_age_secs: u64,
    },
}

/// Now in unix seconds, the clock `updatedAt` is compared with.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A checked ETH / USD feed: read-only calls over the chain client's node.
#[derive(Clone)]
pub struct PriceFeed {
    client: Arc<ChainClient>,
    address: Address,
}

impl std::fmt::Debug for PriceFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PriceFeed")
            .field("address", &self.address)
            .finish()
    }
}

impl PriceFeed {
    /// Checks that `address` holds a contract describing itself as
    /// [`ETH_USD_DESCRIPTION`]; anything else is refused here, at start,
    /// rather than mispricing later.
    pub async fn connect(
        client: Arc<ChainClient>,
        address: Address,
    ) -> Result<PriceFeed, PriceFeedError> {
        let code = client
            .provider()
            .get_code_at(address)
            .await
            .map_err(|e| client.rpc_error(format!("price feed code: {e}")))?;
        if code.is_empty() {
            return Err(PriceFeedError::NoContract(address));
        }
        let feed = AggregatorV3Interface::new(address, client.provider());
        let found = match feed.description().call().await {
            Ok(d) => d,
            // No such function, or answers that are no string: not a feed.
            Err(
                e @ (alloy::contract::Error::ZeroData(..) | alloy::contract::Error::AbiError(_)),
            ) => {
                return Err(PriceFeedError::NotAFeed {
                    address,
                    reason: e.to_string(),
                })
            }
            Err(e) => {
                return Err(match client.call_error("description", e) {
                    ChainError::WouldRevert { reason, .. } => {
                        PriceFeedError::NotAFeed { address, reason }
                    }
                    other => other.into(),
                })
            }
        };
        check_description(address, &found)?;
        Ok(PriceFeed { client, address })
    }

    pub fn address(&self) -> Address {
        self.address
    }

    /// The latest round, checked.
    pub async fn read(&self) -> Result<Reading, PriceFeedError> {
        let feed = AggregatorV3Interface::new(self.address, self.client.provider());
        let round_call = feed.latestRoundData();
        let decimals_call = feed.decimals();
        // Two calls, as go-livepeer makes: a feed's decimals do not change
        // in practice, and pinning both to one block would fail on load-
        // balanced nodes that have not seen that block yet.
        let (round, decimals) = tokio::try_join!(round_call.call(), decimals_call.call())
            .map_err(|e| self.client.call_error("price feed read", e))?;
        Reading::from_round(
            round.roundId.to::<u128>(),
            round.answer,
            round.updatedAt,
            decimals,
        )
    }
}

fn check_description(address: Address, found: &str) -> Result<(), PriceFeedError> {
    if found == ETH_USD_DESCRIPTION {
        Ok(())
    } else {
        Err(PriceFeedError::WrongFeed {
            address,
            found: found.to_string(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct WatcherOptions {
    /// How often the feed is read (go-livepeer: at every whole UTC hour).
    pub refresh: Duration,
    /// The wait after a failed read; it doubles with each failure in a
    /// row, up to `refresh` (go-livepeer: 30 s doubling, 5 tries, then
    /// nothing until the next hour).
    pub retry: Duration,
}

impl Default for WatcherOptions {
    fn default() -> Self {
        WatcherOptions {
            refresh: Duration::from_secs(60),
            retry: Duration::from_secs(5),
        }
    }
}

/// Keeps the newest reading of a feed, refreshed in the background.
pub struct PriceFeedWatcher {
    feed: PriceFeed,
    options: WatcherOptions,
    current: watch::Sender<Option<Reading>>,
}

impl PriceFeedWatcher {
    pub fn new(feed: PriceFeed, options: WatcherOptions) -> Self {
        PriceFeedWatcher {
            feed,
            options,
            current: watch::channel(None).0,
        }
    }

    pub fn feed(&self) -> &PriceFeed {
        &self.feed
    }

    /// Reads the feed once and keeps the reading if it is newer than the
    /// one kept; returns the reading kept after it. Tests drive this
    /// directly.
    pub async fn refresh(&self) -> Result<Reading, PriceFeedError> {
        let reading = self.feed.read().await?;
        if keep_newest(&self.current, reading.clone()) {
            tracing::info!(
                feed = %self.feed.address,
                round = reading.round_id,
                answer = %reading.answer,
                decimals = reading.decimals,
                updated_at = reading.updated_at,
                "ETH / USD price updated"
            );
        }
        Ok(self
            .current()
            .expect("a reading is kept once one has been read"))
    }

    /// The newest reading, however old; `None` until the first read.
    pub fn current(&self) -> Option<Reading> {
        self.current.borrow().clone()
    }

    /// Every newer reading, as it is kept.
    pub fn subscribe(&self) -> watch::Receiver<Option<Reading>> {
        self.current.subscribe()
    }

    /// The newest reading if its round was updated at most `max_age` ago.
    pub fn fresh(&self, max_age: Duration) -> Result<Reading, StaleError> {
        self.fresh_at(max_age, unix_now())
    }

    /// [`fresh`](Self::fresh) by another clock (unix seconds).
    pub fn fresh_at(&self, max_age: Duration, now: u64) -> Result<Reading, StaleError> {
        let current = self.current.borrow();
        let reading = current.as_ref().ok_or(StaleError::NoReading)?;
        reading.check_fresh(max_age, now).cloned()
    }

    /// Reads the feed now and then every `refresh` until `shutdown`
    /// resolves; a failed read is tried again sooner, backing off.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.options.retry;
        loop {
            // A node that never answers must not stall the loop.
            let read = tokio::time::timeout(self.options.refresh, self.refresh());
            let outcome = tokio::select! {
                _ = &mut shutdown => return,
                r = read => r,
            };
            let wait = match outcome {
                Ok(Ok(_)) => {
                    backoff = self.options.retry;
                    self.options.refresh
                }
                failed => {
                    let error = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => format!("no answer within {:?}", self.options.refresh),
                    };
                    let wait = backoff.min(self.options.refresh);
                    tracing::warn!(feed = %self.feed.address, %error, retry_in = ?wait, "reading the ETH / USD price feed failed");
                    backoff = backoff.saturating_mul(2).min(self.options.refresh);
                    wait
                }
            };
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// Keeps `reading` if there is none yet or it was updated later than the
/// one kept (go-livepeer's rule: an older round, as a node behind the
/// others may serve, never replaces a newer one). Returns whether it did.
fn keep_newest(current: &watch::Sender<Option<Reading>>, reading: Reading) -> bool {
    current.send_if_modified(|kept| match kept {
        Some(k) if k.updated_at >= reading.updated_at => false,
        _ => {
            *kept = Some(reading);
            true
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live_runner::price::UsdPrice;

    fn reading(answer: u64, updated_at: u64) -> Reading {
        Reading::from_round(
            1,
            I256::try_from(answer).unwrap(),
            U256::from(updated_at),
            8,
        )
        .unwrap()
    }

    #[test]
    fn only_an_eth_usd_feed_is_accepted() {
        let a = ARBITRUM_ONE_ETH_USD_FEED;
        assert!(check_description(a, "ETH / USD").is_ok());
        for wrong in [
            "USD / ETH",
            "ETH/USD",
            "eth / usd",
            "ETH / USD ",
            "STETH / USD",
            "ETH / EUR",
            "v0.8/tests/MockV3Aggregator.sol",
            "",
        ] {
            assert!(
                matches!(check_description(a, wrong), Err(PriceFeedError::WrongFeed { ref found, .. }) if found == wrong),
                "{wrong:?}"
            );
        }
        // As go-livepeer writes it, EIP-55 checksum included.
        assert_eq!(
            a.to_checksum(None),
            "0x639Fe6ab55C921f74e7fac1ee960C0B6293ba612"
        );
    }

    #[test]
    fn rounds_are_checked() {
        let r = reading(2000_0000_0000, 1_700_000_000);
        assert_eq!(r.answer, U256::from(2000_0000_0000u64));
        assert_eq!((r.decimals, r.updated_at), (8, 1_700_000_000));
        for bad in [I256::ZERO, I256::MINUS_ONE, I256::MIN] {
            let e = Reading::from_round(7, bad, U256::from(1u8), 8).unwrap_err();
            assert!(
                matches!(e, PriceFeedError::NotPositive { round_id: 7, .. }),
                "{e}"
            );
            assert!(e.is_transient());
        }
        assert!(matches!(
            Reading::from_round(7, I256::ONE, U256::ZERO, 8),
            Err(PriceFeedError::NoUpdateTime { round_id: 7 })
        ));
        assert!(matches!(
            Reading::from_round(7, I256::ONE, U256::from(u64::MAX) + U256::from(1u8), 8),
            Err(PriceFeedError::BadUpdateTime { .. })
        ));
        // The largest answer an int256 holds is still a price.
        let max = Reading::from_round(1, I256::MAX, U256::from(1u8), 8).unwrap();
        assert_eq!(max.answer, I256::MAX.into_raw());
    }

    #[test]
    fn a_reading_prices_as_go_livepeer_does() {
        // live_runner_test.go: ETH at $2000, $10/hour -> 1388888888888 wei/s.
        let r = reading(2000_0000_0000, 1_700_000_000);
        let eth: EthUsd = (&r).into();
        assert_eq!(
            eth,
            EthUsd {
                answer: U256::from(2000_0000_0000u64),
                decimals: 8
            }
        );
        let wei = UsdPrice::parse("10", "usd", "hour")
            .unwrap()
            .to_wei(&r.to_eth_usd())
            .unwrap();
        assert_eq!(wei.wei, 1_388_888_888_888);
    }

    #[test]
    fn staleness_is_the_age_of_the_round() {
        let r = reading(2000_0000_0000, 1_000);
        let limit = Duration::from_secs(600);
        assert_eq!(r.check_fresh(limit, 1_000), Ok(&r));
        assert_eq!(r.check_fresh(limit, 1_600), Ok(&r));
        assert_eq!(
            r.check_fresh(limit, 1_601),
            Err(StaleError::TooOld {
                updated_at: 1_000,
                age_secs: 601,
                max_age_secs: 600
            })
        );
        // Stamped a little ahead of this clock: not old at all.
        assert_eq!(r.age_at(990), 0);
        assert_eq!(r.check_fresh(Duration::ZERO, 990), Ok(&r));
        assert!(unix_now() > 1_700_000_000);
    }

    #[test]
    fn only_a_later_update_replaces_the_reading_kept() {
        let (tx, mut rx) = watch::channel(None);
        assert!(keep_newest(&tx, reading(2000, 100)));
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // Same time or older (a node behind the others): kept as is.
        assert!(!keep_newest(&tx, reading(2100, 100)));
        assert!(!keep_newest(&tx, reading(2200, 99)));
        assert!(!rx.has_changed().unwrap());
        assert_eq!(tx.borrow().as_ref().unwrap().answer, U256::from(2000u64));
        assert!(keep_newest(&tx, reading(1900, 101)));
        assert!(rx.has_changed().unwrap());
        assert_eq!(tx.borrow().as_ref().unwrap().answer, U256::from(1900u64));
    }
}
