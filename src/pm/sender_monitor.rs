//! The sender monitor: what each sender can still pay this recipient.
//!
//! A sender's on-chain funds are read from the TicketBroker (cached
//! briefly, by the caller) and the face value of its winning tickets that
//! were received and not yet redeemed is counted here as *pending*. The
//! most a new ticket may be worth (the max float) is what the funds
//! guarantee minus what is already owed, so a sender cannot make the node
//! hold more winners than it can pay (go-livepeer `pm/sendermonitor.go`).
//!
//! Senders with nothing pending and no recent use are evicted, and the map
//! is capped, so strangers cannot grow it without bound.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use alloy_primitives::{Address, U256};

use super::recipient::SenderFunds;

/// Funds read from the chain are reused this long.
pub const FUNDS_TTL: Duration = Duration::from_secs(2);
/// A sender with nothing pending is forgotten after this long unused.
pub const IDLE_TTL: Duration = Duration::from_secs(600);
/// Most senders kept at once; beyond it the least recently used sender
/// with nothing pending is dropped (its funds are read again if it returns).
pub const MAX_SENDERS: usize = 100_000;

#[derive(Debug)]
struct Entry {
    funds: Option<(Instant, SenderFunds)>,
    /// Face value of this sender's winning tickets not yet redeemed.
    pending: U256,
    used: Instant,
}

impl Entry {
    fn new() -> Self {
        Entry {
            funds: None,
            pending: U256::ZERO,
            used: Instant::now(),
        }
    }
}

/// The max float for `funds` with `pending` already owed.
///
/// With a reserve share (the node is in the active set), the share is the
/// guarantee, as in go-livepeer: the float is the share minus what is
/// pending, or the whole share while the deposit alone covers the pending
/// winners three times over. Without one (an AI node outside the active
/// set, which the broker pays from the deposit only) the deposit is all a
/// sender can pay, so it bounds the float, less what is pending. Either
/// way one deposit cannot back more than its own value in winners.
pub fn max_float(funds: &SenderFunds, pending: U256) -> U256 {
    if funds.reserve_alloc.is_zero() {
        return funds.deposit.saturating_sub(pending);
    }
    if pending.is_zero() || funds.deposit / pending >= U256::from(3) {
        return funds.reserve_alloc;
    }
    funds.reserve_alloc.saturating_sub(pending)
}

#[derive(Debug, Default)]
pub struct SenderMonitor {
    senders: Mutex<HashMap<Address, Entry>>,
}

impl SenderMonitor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts with what the ticket store still owes per sender (winners
    /// queued before a restart).
    pub fn with_pending(pending: impl IntoIterator<Item = (Address, U256)>) -> Self {
        let monitor = Self::new();
        {
            let mut senders = monitor.lock();
            for (sender, amount) in pending {
                let e = senders.entry(sender).or_insert_with(Entry::new);
                e.pending = e.pending.saturating_add(amount);
            }
        }
        monitor
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Address, Entry>> {
        self.senders.lock().expect("sender monitor lock")
    }

    /// Cached funds for `sender` if read within [`FUNDS_TTL`].
    pub fn cached_funds(&self, sender: Address) -> Option<SenderFunds> {
        let mut senders = self.lock();
        let e = senders.get_mut(&sender)?;
        e.used = Instant::now();
        e.funds
            .filter(|(at, _)| at.elapsed() < FUNDS_TTL)
            .map(|(_, f)| f)
    }

    /// Funds for `sender` read within `max_age` (longer than the cache's own
    /// TTL: for when reading again is not possible now).
    pub fn recent_funds(&self, sender: Address, max_age: Duration) -> Option<SenderFunds> {
        let mut senders = self.lock();
        let e = senders.get_mut(&sender)?;
        e.used = Instant::now();
        e.funds
            .filter(|(at, _)| at.elapsed() < max_age)
            .map(|(_, f)| f)
    }

    /// Records funds just read from the chain.
    pub fn set_funds(&self, sender: Address, funds: SenderFunds) {
        let mut senders = self.lock();
        if senders.len() >= MAX_SENDERS && !senders.contains_key(&sender) {
            Self::evict(&mut senders);
        }
        let e = senders.entry(sender).or_insert_with(Entry::new);
        e.funds = Some((Instant::now(), funds));
        e.used = Instant::now();
    }

    /// Forgets cached funds (after a redemption moved them on chain).
    pub fn invalidate_funds(&self, sender: Address) {
        if let Some(e) = self.lock().get_mut(&sender) {
            e.funds = None;
        }
    }

    pub fn pending(&self, sender: Address) -> U256 {
        self.lock().get(&sender).map_or(U256::ZERO, |e| e.pending)
    }

    /// The max float of `sender` with `funds`.
    pub fn max_float(&self, sender: Address, funds: &SenderFunds) -> U256 {
        max_float(funds, self.pending(sender))
    }

    /// Admits a winning ticket of `face_value`: checked against the max
    /// float and added to pending in one step, so concurrent payments of
    /// one sender cannot both spend the same float. Returns the max float
    /// it was refused against.
    pub fn admit_winner(
        &self,
        sender: Address,
        funds: &SenderFunds,
        face_value: U256,
    ) -> Result<(), U256> {
        let mut senders = self.lock();
        let e = senders.entry(sender).or_insert_with(Entry::new);
        let float = max_float(funds, e.pending);
        if face_value > float {
            return Err(float);
        }
        e.pending = e.pending.saturating_add(face_value);
        e.used = Instant::now();
        Ok(())
    }

    /// Adds a winner to pending without a float check (one stored although
    /// its payment was refused, e.g. params expired: it is still owed).
    pub fn add_pending(&self, sender: Address, face_value: U256) {
        let mut senders = self.lock();
        let e = senders.entry(sender).or_insert_with(Entry::new);
        e.pending = e.pending.saturating_add(face_value);
        e.used = Instant::now();
    }

    /// A winner left the queue (redeemed, used, expired, given up): no
    /// longer owed. Funds are read again next time.
    pub fn resolved(&self, sender: Address, face_value: U256) {
        if let Some(e) = self.lock().get_mut(&sender) {
            e.pending = e.pending.saturating_sub(face_value);
            e.funds = None;
        }
    }

    /// Drops idle senders with nothing pending; returns how many remain.
    pub fn sweep(&self) -> usize {
        let mut senders = self.lock();
        senders.retain(|_, e| !e.pending.is_zero() || e.used.elapsed() < IDLE_TTL);
        senders.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room: idle senders first, then the least recently used tenth
    /// of those with nothing pending, so a full map is scanned once per
    /// many thousand new senders, not once per sender.
    fn evict(senders: &mut HashMap<Address, Entry>) {
        senders.retain(|_, e| !e.pending.is_zero() || e.used.elapsed() < IDLE_TTL);
        if senders.len() < MAX_SENDERS {
            return;
        }
        let mut unowed: Vec<(Instant, Address)> = senders
            .iter()
            .filter(|(_, e)| e.pending.is_zero())
            .map(|(a, e)| (e.used, *a))
            .collect();
        let drop = (MAX_SENDERS / 10).min(unowed.len());
        if drop == 0 {
            return;
        }
        unowed.select_nth_unstable(drop - 1);
        for (_, a) in &unowed[..drop] {
            senders.remove(a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn funds(deposit: u64, reserve: u64) -> SenderFunds {
        SenderFunds {
            deposit: U256::from(deposit),
            reserve_alloc: U256::from(reserve),
            withdraw_round: 0,
        }
    }

    #[test]
    fn float_is_what_the_funds_guarantee_less_what_is_owed() {
        // Reserve share: the guarantee; pending comes off it unless the
        // deposit covers pending three times over (go-livepeer).
        assert_eq!(max_float(&funds(0, 100), U256::ZERO), U256::from(100));
        assert_eq!(max_float(&funds(0, 100), U256::from(40)), U256::from(60));
        assert_eq!(max_float(&funds(120, 100), U256::from(40)), U256::from(100));
        assert_eq!(max_float(&funds(119, 100), U256::from(40)), U256::from(60));
        // No reserve share: the deposit, less what is owed.
        assert_eq!(max_float(&funds(100, 0), U256::from(30)), U256::from(70));
        assert_eq!(max_float(&funds(100, 0), U256::from(300)), U256::ZERO);
    }

    #[test]
    fn one_deposit_backs_one_winner_of_its_value() {
        let m = SenderMonitor::new();
        let s = Address::repeat_byte(7);
        let f = funds(1000, 0);
        assert_eq!(m.admit_winner(s, &f, U256::from(1000)), Ok(()));
        assert_eq!(m.admit_winner(s, &f, U256::from(1)), Err(U256::ZERO));
        assert_eq!(m.pending(s), U256::from(1000));
        m.resolved(s, U256::from(1000));
        assert_eq!(m.pending(s), U256::ZERO);
        assert!(
            m.cached_funds(s).is_none(),
            "funds are read again after a redemption"
        );
    }

    #[test]
    fn idle_senders_are_swept_and_owing_ones_kept() {
        let m = SenderMonitor::with_pending([(Address::repeat_byte(1), U256::from(5))]);
        m.set_funds(Address::repeat_byte(2), funds(1, 0));
        assert_eq!(m.len(), 2);
        // Age the idle one.
        m.lock().get_mut(&Address::repeat_byte(2)).unwrap().used -= IDLE_TTL;
        m.lock().get_mut(&Address::repeat_byte(1)).unwrap().used -= IDLE_TTL;
        assert_eq!(m.sweep(), 1, "the sender with pending winners stays");
        assert_eq!(m.pending(Address::repeat_byte(1)), U256::from(5));
    }

    /// Funds past the cache's TTL are not cached any more, but still
    /// recent for the busy fallback until its own limit.
    #[test]
    fn recent_funds_outlive_the_cache_within_their_limit() {
        let m = SenderMonitor::new();
        let s = Address::repeat_byte(3);
        m.set_funds(s, funds(7, 1));
        m.lock().get_mut(&s).unwrap().funds.as_mut().unwrap().0 =
            Instant::now() - FUNDS_TTL - Duration::from_millis(1);
        assert!(m.cached_funds(s).is_none());
        let recent = m
            .recent_funds(s, Duration::from_secs(60))
            .map(|f| f.deposit);
        assert_eq!(recent, Some(U256::from(7)));
        assert!(m.recent_funds(s, FUNDS_TTL).is_none());
        assert!(m
            .recent_funds(Address::repeat_byte(4), Duration::from_secs(60))
            .is_none());
    }

    /// Fresh senders beyond the cap (one per `GetOrchestrator` from a new
    /// key) evict idle ones; a sender owed winners is never evicted.
    #[test]
    fn the_funds_cache_stays_under_its_cap() {
        let owing = Address::repeat_byte(0xee);
        let m = SenderMonitor::with_pending([(owing, U256::from(5))]);
        for i in 0..MAX_SENDERS as u64 + 1000 {
            let mut a = [0u8; 20];
            a[..8].copy_from_slice(&i.to_be_bytes());
            m.set_funds(Address::from(a), funds(1, 0));
            assert!(m.len() <= MAX_SENDERS);
        }
        assert!(m.len() <= MAX_SENDERS);
        assert_eq!(m.pending(owing), U256::from(5));
    }
}
