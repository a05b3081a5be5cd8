//! The ETH / USD price feed on a local chain: Chainlink's MockV3Aggregator
//! (npm @chainlink/contracts) behind tests/chain/contracts/EthUsdFeed.sol,
//! which describes itself "ETH / USD" as the Arbitrum One feed does. Read,
//! converted to wei as go-livepeer converts runner prices, followed as the
//! answer moves, refused when stale or when the contract is another feed.
//!
//! Needs `node` and tests/chain/node_modules (scripts/install-deps).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::U256;
use common::chain::LocalChain;
use lpworker::chain::price_feed::{
    unix_now, PriceFeed, PriceFeedError, PriceFeedWatcher, Reading, StaleError, WatcherOptions,
    ARBITRUM_ONE_ETH_USD_FEED,
};
use lpworker::live_runner::price::{BillingUnit, UsdPrice};

/// $2000 with Chainlink's 8 decimals.
const ETH_2000: &str = "200000000000";

fn options() -> WatcherOptions {
    WatcherOptions {
        refresh: Duration::from_millis(200),
        retry: Duration::from_millis(50),
    }
}

/// The first reading kept by `watcher` that satisfies `pred`.
async fn wait_for(
    watcher: &PriceFeedWatcher,
    within: Duration,
    pred: impl Fn(&Reading) -> bool,
) -> Reading {
    let mut rx = watcher.subscribe();
    tokio::time::timeout(within, async {
        loop {
            if let Some(r) = rx.borrow_and_update().clone().filter(&pred) {
                return r;
            }
            rx.changed().await.expect("watcher alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no such reading within {within:?}: {:?}", watcher.current()))
}

fn wei_per_second(usd_per_hour: &str, r: &Reading) -> u64 {
    let wei = UsdPrice::parse(usd_per_hour, "usd", "hour")
        .unwrap()
        .to_wei(&r.to_eth_usd())
        .unwrap();
    assert_eq!(wei.unit, BillingUnit::Seconds);
    wei.wei
}

#[tokio::test(flavor = "multi_thread")]
async fn the_feed_prices_usd_follows_the_chain_and_goes_stale() {
    let mut chain = LocalChain::start(&[]);
    let client = Arc::new(chain.client(0).await);
    let c = chain.deploy_price_feed(8, ETH_2000);

    // One read: ETH at $2000, so $10/hour is go-livepeer's 1388888888888 wei/s.
    let feed = PriceFeed::connect(client.clone(), c.feed)
        .await
        .expect("an ETH / USD feed is accepted");
    assert_eq!(feed.address(), c.feed);
    let r = feed.read().await.unwrap();
    assert_eq!(
        r,
        Reading {
            round_id: 1,
            answer: U256::from(200_000_000_000u64),
            decimals: 8,
            updated_at: c.round.updated_at,
        }
    );
    assert_eq!(wei_per_second("10", &r), 1_388_888_888_888);

    // The watcher reads at once, then every refresh.
    let watcher = Arc::new(PriceFeedWatcher::new(feed, options()));
    assert_eq!(
        watcher.fresh(Duration::from_secs(60)),
        Err(StaleError::NoReading)
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(watcher.clone().run(async move {
        let _ = stopped.await;
    }));
    let first = wait_for(&watcher, Duration::from_secs(5), |r| r.round_id == 1).await;
    assert_eq!(watcher.fresh(Duration::from_secs(60)), Ok(first.clone()));

    // The answer moves to $2500 in a later second (only a later updatedAt
    // replaces the reading kept): picked up within a refresh or so.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let moved = chain.set_price(c.aggregator, "250000000000", None);
    assert!(moved.updated_at > first.updated_at, "{moved:?} {first:?}");
    let t = Instant::now();
    let r = wait_for(&watcher, Duration::from_secs(5), |r| {
        r.round_id == moved.round_id
    })
    .await;
    let took = t.elapsed();
    // A refresh, plus the reads' time on a loaded machine.
    assert!(
        took < options().refresh + Duration::from_millis(800),
        "picked up after {took:?}"
    );
    assert_eq!(r.answer, U256::from(250_000_000_000u64));
    assert_eq!(r.updated_at, moved.updated_at);
    assert_eq!(wei_per_second("10", &r), 1_111_111_111_111);

    // A newer round stamped earlier (what a node behind the others would
    // serve) does not replace the reading kept, as in go-livepeer.
    let older = chain.set_price(c.aggregator, "300000000000", Some(moved.updated_at - 10));
    assert_eq!(older.round_id, moved.round_id + 1);
    tokio::time::sleep(options().refresh * 3).await;
    assert_eq!(watcher.current(), Some(r.clone()));

    // A round answering zero is refused, and the reading kept stays.
    chain.set_price(c.aggregator, "0", None);
    let e = watcher.refresh().await.unwrap_err();
    assert!(
        matches!(e, PriceFeedError::NotPositive { .. }) && e.is_transient(),
        "{e}"
    );
    assert_eq!(watcher.current(), Some(r.clone()));

    // The reading kept ages: refused once older than the limit.
    assert_eq!(
        watcher.fresh_at(Duration::from_secs(600), r.updated_at + 601),
        Err(StaleError::TooOld {
            updated_at: r.updated_at,
            age_secs: 601,
            max_age_secs: 600
        })
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(watcher.fresh(Duration::from_secs(60)).is_ok());
    let e = watcher.fresh(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(e, StaleError::TooOld { age_secs, .. } if age_secs >= 2),
        "{e}"
    );

    // The loop ends with its shutdown future.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the watcher stops on shutdown")
        .unwrap();

    // A feed whose latest round is an hour old: kept, never priced with
    // under a tighter limit.
    let s = chain.deploy_price_feed(8, ETH_2000);
    let hour_ago = unix_now() - 3600;
    chain.set_price(s.aggregator, ETH_2000, Some(hour_ago));
    let stale = PriceFeedWatcher::new(
        PriceFeed::connect(client.clone(), s.feed).await.unwrap(),
        options(),
    );
    let r = stale.refresh().await.unwrap();
    assert_eq!((r.round_id, r.updated_at), (2, hour_ago));
    assert_eq!(stale.current(), Some(r.clone()));
    let e = stale.fresh(Duration::from_secs(600)).unwrap_err();
    assert!(
        matches!(e, StaleError::TooOld { updated_at, age_secs, max_age_secs: 600 }
            if updated_at == hour_ago && age_secs >= 3600),
        "{e}"
    );
    assert!(e.to_string().contains("at most 600 s"), "{e}");
    assert_eq!(stale.fresh(Duration::from_secs(7200)), Ok(r));
}

#[tokio::test(flavor = "multi_thread")]
async fn anything_but_an_eth_usd_feed_is_refused_at_connect() {
    let mut chain = LocalChain::start(&[]);
    let client = Arc::new(chain.client(0).await);
    let c = chain.deploy_price_feed(8, ETH_2000);

    // The bare MockV3Aggregator answers the same rounds but describes
    // itself by its file path.
    let e = PriceFeed::connect(client.clone(), c.aggregator)
        .await
        .unwrap_err();
    match &e {
        PriceFeedError::WrongFeed { address, found } => {
            assert_eq!(*address, c.aggregator);
            assert_eq!(found, "v0.8/tests/MockV3Aggregator.sol");
        }
        other => panic!("{other}"),
    }
    assert!(!e.is_transient());
    assert!(e.to_string().contains("\"ETH / USD\""), "{e}");

    // A contract with no description(): the protocol's Controller.
    let e = PriceFeed::connect(client.clone(), chain.controller)
        .await
        .unwrap_err();
    assert!(matches!(e, PriceFeedError::NotAFeed { .. }), "{e}");

    // No contract at all: an account, and the Arbitrum One feed's address
    // on this chain.
    for addr in [chain.address(1), ARBITRUM_ONE_ETH_USD_FEED] {
        let e = PriceFeed::connect(client.clone(), addr).await.unwrap_err();
        assert!(
            matches!(e, PriceFeedError::NoContract(a) if a == addr),
            "{e}"
        );
    }
}
