//! The crash-safe winning-ticket store: SQLite in WAL mode with synchronous
//! commits, so a winning ticket is on disk before the work it paid for is
//! answered. The ticket hash is the primary key: a ticket is stored once and
//! moves through the redemption states exactly once.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy_primitives::{Address, B256, U256};
use rusqlite::{params, Connection, OptionalExtension};

use super::Ticket;

/// A winning ticket with what redemption needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinningTicket {
    pub ticket: Ticket,
    pub sig: Vec<u8>,
    pub recipient_rand: U256,
    /// The block (L1 on Arbitrum) at which the ticket's params expire.
    /// Redeeming earlier reveals the recipientRand while the sender can
    /// still sign tickets on it (and pick losing ones); 0 = no wait.
    pub params_expiration_block: u64,
}

/// A queued ticket with what redemption tracks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub winner: WinningTicket,
    /// Nonce of a redemption transaction already sent for it (recorded
    /// before sending): the next attempt must find that one first.
    pub tx_nonce: Option<u64>,
    pub tx_hash: Option<B256>,
}

/// Where a ticket is in redemption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Waiting to be redeemed.
    Queued,
    /// Claimed by a redeemer; back to queued on restart (a transaction
    /// sent for it is recorded by nonce first, and looked for before any
    /// other is sent, so never twice).
    Redeeming,
    Redeemed,
    /// Past the ticket validity period before it could be redeemed.
    Expired,
    /// The sender's deposit and reserve could not cover it.
    Unfunded,
    /// The broker already marks it used (redeemed elsewhere).
    Used,
    /// Gave up after repeated failures.
    Failed,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Redeeming => "redeeming",
            Status::Redeemed => "redeemed",
            Status::Expired => "expired",
            Status::Unfunded => "unfunded",
            Status::Used => "used",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Redeeming,
            Status::Redeemed,
            Status::Expired,
            Status::Unfunded,
            Status::Used,
            Status::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("ticket store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("ticket store holds a malformed row: {0}")]
    Corrupt(String),
    #[error("ticket store redeemer lock: {0}")]
    Lock(String),
}

pub struct TicketStore {
    conn: Mutex<Connection>,
    path: std::path::PathBuf,
}

/// Held by the store's one redeemer; dropping it (or dying) lets another
/// process take over.
#[derive(Debug)]
pub struct RedeemerLock {
    _file: std::fs::File,
}

/// A stored sender column as an address.
fn sender_address(bytes: &[u8]) -> Result<Address, StoreError> {
    if bytes.len() != 20 {
        return Err(StoreError::Corrupt(format!(
            "sender has {} bytes",
            bytes.len()
        )));
    }
    Ok(Address::from_slice(bytes))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl TicketStore {
    /// Opens (creating if needed) the store at `path`. Several processes
    /// may open one store (an orchestrator and its separate redeemer); only
    /// the one holding [`TicketStore::take_redemption`] redeems.
    pub fn open(path: &Path) -> Result<TicketStore, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit is fsynced before it returns, WAL or not.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS winning_tickets (
                ticket_hash BLOB PRIMARY KEY,
                recipient BLOB NOT NULL,
                sender BLOB NOT NULL,
                face_value BLOB NOT NULL,
                win_prob BLOB NOT NULL,
                sender_nonce INTEGER NOT NULL,
                recipient_rand_hash BLOB NOT NULL,
                creation_round INTEGER NOT NULL,
                creation_round_block_hash BLOB NOT NULL,
                sig BLOB NOT NULL,
                recipient_rand BLOB NOT NULL,
                status TEXT NOT NULL DEFAULT 'queued',
                attempts INTEGER NOT NULL DEFAULT 0,
                last_error TEXT,
                tx_hash BLOB,
                created_at INTEGER NOT NULL,
                updated_at INTEGER NOT NULL
            ) WITHOUT ROWID;
            CREATE INDEX IF NOT EXISTS winning_tickets_status ON winning_tickets (status, creation_round);",
        )?;
        // Columns added after the first release: stores written by an
        // older version gain them (their tickets wait for no params expiry).
        for (column, decl) in [
            ("params_expiration_block", "INTEGER NOT NULL DEFAULT 0"),
            ("tx_nonce", "INTEGER"),
            ("wait_until", "INTEGER NOT NULL DEFAULT 0"),
        ] {
            let present: bool = conn
                .prepare("SELECT 1 FROM pragma_table_info('winning_tickets') WHERE name = ?1")?
                .exists([column])?;
            if !present {
                conn.execute_batch(&format!(
                    "ALTER TABLE winning_tickets ADD COLUMN {column} {decl}"
                ))?;
            }
        }
        Ok(TicketStore {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// Makes this process the store's one redeemer for as long as the
    /// returned lock lives: two redeemers would send the same ticket twice
    /// and each would take the other's claimed tickets for stranded ones.
    /// The lock is the OS's (released when the process dies, however it
    /// dies), so tickets a crashed redeemer left `redeeming` go back to
    /// `queued` here, once it is known that nobody is redeeming them.
    pub fn take_redemption(&self) -> Result<RedeemerLock, StoreError> {
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".redeemer-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Lock(format!("{}: {e}", Path::new(&lock_path).display())))?;
        // flock(2): held per open file, dropped by the kernel with the
        // process. (std's File::try_lock is newer than our minimum Rust.)
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(StoreError::Lock(format!(
                    "another process redeems from {} (a separate `lpworker redeemer`, or an orchestrator that redeems itself)",
                    self.path.display()
                )))
            }
            Err(e) => {
                return Err(StoreError::Lock(format!(
                    "{}: {e}",
                    Path::new(&lock_path).display()
                )))
            }
        }
        self.requeue_stranded()?;
        Ok(RedeemerLock { _file: file })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("ticket store lock")
    }

    /// Stores a winner durably. Returns false if it was already stored.
    pub fn insert(&self, w: &WinningTicket) -> Result<bool, StoreError> {
        Ok(self.insert_all(std::slice::from_ref(w))? == 1)
    }

    /// Stores winners durably in one transaction (one fsync for a whole
    /// payment); returns how many were new.
    pub fn insert_all(&self, winners: &[WinningTicket]) -> Result<usize, StoreError> {
        Ok(self.insert_new(winners)?.into_iter().filter(|n| *n).count())
    }

    /// [`insert_all`](Self::insert_all), saying for each winner whether it
    /// was new (a replayed one is already stored, and already owed).
    pub fn insert_new(&self, winners: &[WinningTicket]) -> Result<Vec<bool>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut new = Vec::with_capacity(winners.len());
        for w in winners {
            new.push(Self::insert_in(&tx, w)? == 1);
        }
        tx.commit()?;
        Ok(new)
    }

    fn insert_in(conn: &Connection, w: &WinningTicket) -> Result<usize, StoreError> {
        let t = &w.ticket;
        let ts = now();
        let n = conn.execute(
            "INSERT OR IGNORE INTO winning_tickets (ticket_hash, recipient, sender, face_value, win_prob, sender_nonce,
                recipient_rand_hash, creation_round, creation_round_block_hash, sig, recipient_rand, created_at, updated_at,
                params_expiration_block)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, ?13)",
            params![
                t.hash().as_slice(),
                t.recipient.as_slice(),
                t.sender.as_slice(),
                &t.face_value.to_be_bytes::<32>()[..],
                &t.win_prob.to_be_bytes::<32>()[..],
                t.sender_nonce,
                t.recipient_rand_hash.as_slice(),
                t.creation_round,
                t.creation_round_block_hash.as_slice(),
                &w.sig,
                &w.recipient_rand.to_be_bytes::<32>()[..],
                ts,
                i64::try_from(w.params_expiration_block).unwrap_or(i64::MAX),
            ],
        )?;
        Ok(n)
    }

    /// Queued tickets, oldest creation round first.
    pub fn queued(&self, limit: usize) -> Result<Vec<WinningTicket>, StoreError> {
        Ok(self
            .select(
                "WHERE status = 'queued' ORDER BY creation_round, created_at LIMIT ?1",
                params![limit as i64],
            )?
            .into_iter()
            .map(|q| q.winner)
            .collect())
    }

    /// Queued tickets whose params expired by `block`, taken in turns
    /// across senders (at most `per_sender` each, each sender's oldest
    /// first), so one sender's backlog never delays another's winners.
    pub fn redeemable(
        &self,
        block: u64,
        per_sender: usize,
        limit: usize,
    ) -> Result<Vec<Queued>, StoreError> {
        // Every sender's first due ticket, then every sender's second, ...:
        // however many tickets the first senders have, the limit reaches
        // the others. Tickets told to wait are skipped until their time.
        self.select(
            "JOIN (
                SELECT ticket_hash AS due, ROW_NUMBER() OVER (
                    PARTITION BY sender ORDER BY creation_round, created_at, sender_nonce) AS turn
                FROM winning_tickets
                WHERE status = 'queued' AND params_expiration_block <= ?1 AND wait_until <= ?4)
             ON ticket_hash = due
             WHERE turn <= ?2
             ORDER BY turn, sender LIMIT ?3",
            params![
                i64::try_from(block).unwrap_or(i64::MAX),
                per_sender as i64,
                limit as i64,
                now()
            ],
        )
    }

    /// Face value still owed per sender (queued or mid-redemption): what
    /// the sender monitor starts from after a restart.
    pub fn pending_by_sender(&self) -> Result<Vec<(Address, U256)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT sender, face_value FROM winning_tickets WHERE status IN ('queued', 'redeeming')",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut sums: std::collections::HashMap<Address, U256> = Default::default();
        for row in rows {
            let (sender, fv) = row?;
            let e = sums.entry(sender_address(&sender)?).or_default();
            *e = e.saturating_add(U256::from_be_slice(&fv));
        }
        Ok(sums.into_iter().collect())
    }

    /// Per sender: face value still owed (queued or mid-redemption) and
    /// face value settled (left the queue for good, however), read in one
    /// statement so the two agree. An orchestrator whose winners another
    /// process redeems learns what was settled from the second figure's
    /// growth: rows are never deleted, so it only grows.
    pub fn owed_and_settled_by_sender(&self) -> Result<Vec<(Address, U256, U256)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT sender, face_value, status IN ('queued', 'redeeming') FROM winning_tickets",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?;
        let mut sums: std::collections::HashMap<Address, (U256, U256)> = Default::default();
        for row in rows {
            let (sender, fv, owed) = row?;
            let e = sums.entry(sender_address(&sender)?).or_default();
            let fv = U256::from_be_slice(&fv);
            if owed {
                e.0 = e.0.saturating_add(fv);
            } else {
                e.1 = e.1.saturating_add(fv);
            }
        }
        Ok(sums.into_iter().map(|(s, (o, d))| (s, o, d)).collect())
    }

    /// Marks queued tickets created before `oldest_valid_round` expired
    /// (past the broker's validity period: no transaction can pay them)
    /// and returns them, in one statement and with no chain reads.
    pub fn expire_before(
        &self,
        oldest_valid_round: i64,
    ) -> Result<Vec<(Address, U256)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "UPDATE winning_tickets SET status = 'expired', last_error = 'ticket validity period passed', updated_at = ?2
             WHERE status = 'queued' AND creation_round < ?1
             RETURNING sender, face_value",
        )?;
        let rows = stmt.query_map(params![oldest_valid_round, now()], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sender, fv) = row?;
            out.push((sender_address(&sender)?, U256::from_be_slice(&fv)));
        }
        Ok(out)
    }

    fn select(&self, filter: &str, args: impl rusqlite::Params) -> Result<Vec<Queued>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT recipient, sender, face_value, win_prob, sender_nonce, recipient_rand_hash, creation_round,
                    creation_round_block_hash, sig, recipient_rand, params_expiration_block, tx_nonce, tx_hash
             FROM winning_tickets {filter}"
        ))?;
        let rows = stmt.query_map(args, |r| {
            Ok((
                (
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, Vec<u8>>(5)?,
                    r.get::<_, i64>(6)?,
                    r.get::<_, Vec<u8>>(7)?,
                    r.get::<_, Vec<u8>>(8)?,
                    r.get::<_, Vec<u8>>(9)?,
                ),
                r.get::<_, i64>(10)?,
                r.get::<_, Option<i64>>(11)?,
                r.get::<_, Option<Vec<u8>>>(12)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (
                (recipient, sender, fv, wp, nonce, rrh, round, hash, sig, rand),
                expiry,
                tx_nonce,
                tx_hash,
            ) = row?;
            let fixed = |b: &[u8], n: usize, what: &str| {
                (b.len() == n)
                    .then_some(())
                    .ok_or_else(|| StoreError::Corrupt(format!("{what} has {} bytes", b.len())))
            };
            fixed(&recipient, 20, "recipient")?;
            fixed(&sender, 20, "sender")?;
            fixed(&rrh, 32, "recipient_rand_hash")?;
            fixed(&hash, 32, "block hash")?;
            if let Some(h) = &tx_hash {
                fixed(h, 32, "tx_hash")?;
            }
            out.push(Queued {
                winner: WinningTicket {
                    ticket: Ticket {
                        recipient: Address::from_slice(&recipient),
                        sender: Address::from_slice(&sender),
                        face_value: U256::from_be_slice(&fv),
                        win_prob: U256::from_be_slice(&wp),
                        sender_nonce: nonce,
                        recipient_rand_hash: B256::from_slice(&rrh),
                        creation_round: round,
                        creation_round_block_hash: B256::from_slice(&hash),
                    },
                    sig,
                    recipient_rand: U256::from_be_slice(&rand),
                    params_expiration_block: u64::try_from(expiry).unwrap_or(0),
                },
                tx_nonce: tx_nonce.and_then(|n| u64::try_from(n).ok()),
                tx_hash: tx_hash.map(|h| B256::from_slice(&h)),
            });
        }
        Ok(out)
    }

    /// Records, durably and before it is broadcast, the nonce (and once
    /// known the hash) of a redemption transaction for a claimed ticket.
    pub fn record_tx(
        &self,
        ticket_hash: B256,
        nonce: Option<u64>,
        tx_hash: Option<B256>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE winning_tickets SET
                tx_hash = CASE WHEN tx_nonce IS ?2 THEN COALESCE(?3, tx_hash) ELSE ?3 END,
                tx_nonce = ?2, updated_at = ?4
             WHERE ticket_hash = ?1",
            params![
                ticket_hash.as_slice(),
                nonce.and_then(|n| i64::try_from(n).ok()),
                tx_hash.map(|h| h.to_vec()),
                now()
            ],
        )?;
        Ok(())
    }

    /// Puts tickets left mid-redemption (`redeeming`: a store error after
    /// their claim) back in the queue; a transaction sent for one was
    /// recorded by nonce first and is looked for before any other is sent.
    /// Returns how many.
    pub fn requeue_stranded(&self) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE winning_tickets SET status = 'queued' WHERE status = 'redeeming'",
            [],
        )?)
    }

    /// Leaves a queued ticket out of [`redeemable`](Self::redeemable) for
    /// `seconds` (it waits for funds or cheaper gas: others go first).
    pub fn defer(&self, ticket_hash: B256, seconds: u64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE winning_tickets SET wait_until = ?2 WHERE ticket_hash = ?1 AND status = 'queued'",
            params![ticket_hash.as_slice(), now().saturating_add(seconds as i64)],
        )?;
        Ok(())
    }

    /// Claims a queued ticket for redemption. Returns false if it was not
    /// queued (already claimed or finished): the check that keeps one ticket
    /// from being redeemed twice.
    pub fn claim(&self, ticket_hash: B256) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE winning_tickets SET status = 'redeeming', updated_at = ?2
             WHERE ticket_hash = ?1 AND status = 'queued'",
            params![ticket_hash.as_slice(), now()],
        )?;
        Ok(n == 1)
    }

    /// Records a claimed ticket's outcome; `Queued` puts it back for a
    /// retry. `refused` counts an attempt the chain refused (transient
    /// trouble and waiting for gas or funds count none); returns the
    /// attempts counted so far.
    pub fn finish(
        &self,
        ticket_hash: B256,
        status: Status,
        error: Option<&str>,
        tx_hash: Option<B256>,
        refused: bool,
    ) -> Result<u32, StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE winning_tickets SET status = ?2, last_error = ?3, tx_hash = COALESCE(?4, tx_hash), updated_at = ?5,
                attempts = attempts + ?6
             WHERE ticket_hash = ?1 AND status = 'redeeming'",
            params![ticket_hash.as_slice(), status.as_str(), error, tx_hash.map(|h| h.to_vec()), now(), i64::from(refused)],
        )?;
        Ok(conn
            .query_row(
                "SELECT attempts FROM winning_tickets WHERE ticket_hash = ?1",
                [ticket_hash.as_slice()],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    pub fn status(&self, ticket_hash: B256) -> Result<Option<(Status, u32)>, StoreError> {
        let row: Option<(String, u32)> = self
            .conn()
            .query_row(
                "SELECT status, attempts FROM winning_tickets WHERE ticket_hash = ?1",
                [ticket_hash.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(s, a)| {
            Status::parse(&s)
                .map(|st| (st, a))
                .ok_or_else(|| StoreError::Corrupt(format!("status {s:?}")))
        })
        .transpose()
    }

    /// Number of stored tickets per status.
    pub fn counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT status, COUNT(*) FROM winning_tickets GROUP BY status ORDER BY status",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn winner(nonce: u32) -> WinningTicket {
        WinningTicket {
            ticket: Ticket {
                recipient: Address::repeat_byte(1),
                sender: Address::repeat_byte(2),
                face_value: U256::from(10u64.pow(18)),
                win_prob: U256::MAX,
                sender_nonce: nonce,
                recipient_rand_hash: B256::repeat_byte(3),
                creation_round: 100 + i64::from(nonce % 3),
                creation_round_block_hash: B256::repeat_byte(4),
            },
            sig: vec![5; 65],
            recipient_rand: U256::from(nonce) << 200,
            params_expiration_block: 1000 + u64::from(nonce),
        }
    }

    #[test]
    fn stored_once_claimed_once_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tickets.db");
        {
            let store = TicketStore::open(&path).unwrap();
            for n in 0..10 {
                assert!(store.insert(&winner(n)).unwrap());
            }
            assert!(
                !store.insert(&winner(3)).unwrap(),
                "a duplicate is not stored twice"
            );
            let hash = winner(0).ticket.hash();
            assert!(store.claim(hash).unwrap());
            assert!(!store.claim(hash).unwrap(), "a ticket is claimed once");
            store
                .finish(
                    hash,
                    Status::Redeemed,
                    None,
                    Some(B256::repeat_byte(9)),
                    false,
                )
                .unwrap();
            assert!(store.claim(winner(1).ticket.hash()).unwrap());
            // Dropped with ticket 1 mid-redemption, as a crash would leave it.
        }
        let store = TicketStore::open(&path).unwrap();
        assert_eq!(
            store.status(winner(0).ticket.hash()).unwrap(),
            Some((Status::Redeemed, 0))
        );
        // Opening alone changes nothing: another process may be redeeming.
        assert_eq!(
            store.status(winner(1).ticket.hash()).unwrap(),
            Some((Status::Redeeming, 0))
        );
        let _redeemer = store.take_redemption().unwrap();
        assert_eq!(
            store.status(winner(1).ticket.hash()).unwrap(),
            Some((Status::Queued, 0)),
            "back in the queue once this process is the redeemer"
        );
        let queued = store.queued(100).unwrap();
        assert_eq!(queued.len(), 9);
        assert!(queued
            .windows(2)
            .all(|w| w[0].ticket.creation_round <= w[1].ticket.creation_round));
        assert!(
            queued.contains(&winner(5)),
            "round trip preserves every field"
        );
        assert_eq!(
            store.counts().unwrap(),
            vec![("queued".into(), 9), ("redeemed".into(), 1)]
        );
    }

    #[test]
    fn redeemable_waits_for_params_expiry_and_takes_senders_in_turns() {
        let dir = tempfile::tempdir().unwrap();
        let store = TicketStore::open(&dir.path().join("t.db")).unwrap();
        // A claim left behind by a failed pass goes back to the queue.
        store.insert(&winner(50)).unwrap();
        assert!(store.claim(winner(50).ticket.hash()).unwrap());
        assert_eq!(store.requeue_stranded().unwrap(), 1);
        assert_eq!(
            store.status(winner(50).ticket.hash()).unwrap().unwrap().0,
            Status::Queued
        );
        store.claim(winner(50).ticket.hash()).unwrap();
        store
            .finish(
                winner(50).ticket.hash(),
                Status::Redeemed,
                None,
                None,
                false,
            )
            .unwrap();
        // Sender A has a backlog of 6, sender B one ticket.
        for n in 0..6 {
            store.insert(&winner(n)).unwrap();
        }
        let mut b = winner(100);
        b.ticket.sender = Address::repeat_byte(0xb);
        b.params_expiration_block = 900;
        store.insert(&b).unwrap();
        // Nothing's params expired at block 999 but B's.
        let at_999 = store.redeemable(999, 2, 10).unwrap();
        assert_eq!(at_999.len(), 1);
        assert_eq!(at_999[0].winner, b);
        // At 1010 everything is due; at most 2 of A's, and B's is not behind them.
        let due = store.redeemable(1010, 2, 10).unwrap();
        let senders: Vec<Address> = due.iter().map(|q| q.winner.ticket.sender).collect();
        assert_eq!(
            senders
                .iter()
                .filter(|s| **s == Address::repeat_byte(2))
                .count(),
            2
        );
        assert!(senders.contains(&Address::repeat_byte(0xb)));
        // Pending per sender is the face value of what is still owed.
        let pending: std::collections::HashMap<Address, U256> =
            store.pending_by_sender().unwrap().into_iter().collect();
        assert_eq!(
            pending[&Address::repeat_byte(2)],
            U256::from(6u64 * 10u64.pow(18))
        );
        // A recorded transaction is read back with the ticket.
        let h = winner(0).ticket.hash();
        assert!(store.claim(h).unwrap());
        store
            .record_tx(h, Some(7), Some(B256::repeat_byte(8)))
            .unwrap();
        store
            .finish(h, Status::Queued, Some("no receipt"), None, false)
            .unwrap();
        let q = store.redeemable(1010, 6, 10).unwrap();
        let mine = q.iter().find(|q| q.winner.ticket.hash() == h).unwrap();
        assert_eq!(
            (mine.tx_nonce, mine.tx_hash),
            (Some(7), Some(B256::repeat_byte(8)))
        );
        // Past the validity period: expired in bulk, no longer pending.
        let expired = store.expire_before(101).unwrap();
        assert_eq!(expired.len(), 2, "rounds 100 of A (nonces 0 and 3)");
        assert_eq!(store.status(h).unwrap().unwrap().0, Status::Expired);
    }

    #[test]
    fn one_process_redeems_from_a_store_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let orchestrator = TicketStore::open(&path).unwrap();
        let redeemer = TicketStore::open(&path).unwrap();
        orchestrator.insert(&winner(0)).unwrap();
        let held = redeemer.take_redemption().unwrap();
        assert!(redeemer.claim(winner(0).ticket.hash()).unwrap());
        // A second redeemer is refused, and its refusal leaves the first
        // one's claimed ticket alone.
        let err = orchestrator.take_redemption().unwrap_err();
        assert!(err.to_string().contains("another process redeems"), "{err}");
        assert_eq!(
            orchestrator.status(winner(0).ticket.hash()).unwrap(),
            Some((Status::Redeeming, 0))
        );
        drop(held);
        let _taken = orchestrator.take_redemption().unwrap();
        assert_eq!(
            orchestrator.status(winner(0).ticket.hash()).unwrap(),
            Some((Status::Queued, 0)),
            "the old redeemer's claim is released with its lock"
        );
    }

    #[test]
    fn owed_and_settled_face_value_per_sender() {
        let dir = tempfile::tempdir().unwrap();
        let store = TicketStore::open(&dir.path().join("t.db")).unwrap();
        for i in 0..4 {
            store.insert(&winner(i)).unwrap();
        }
        let before = store.owed_and_settled_by_sender().unwrap();
        let total = |rows: &[(Address, U256, U256)]| {
            rows.iter()
                .fold((U256::ZERO, U256::ZERO), |(o, d), r| (o + r.1, d + r.2))
        };
        let fv = |i| winner(i).ticket.face_value;
        assert_eq!(total(&before), (fv(0) + fv(1) + fv(2) + fv(3), U256::ZERO));
        let redeemed = winner(1).ticket.hash();
        assert!(store.claim(redeemed).unwrap());
        store
            .finish(redeemed, Status::Redeemed, None, None, false)
            .unwrap();
        let claimed = winner(2).ticket.hash();
        assert!(store.claim(claimed).unwrap());
        let after = store.owed_and_settled_by_sender().unwrap();
        // Mid-redemption is still owed; redeemed is settled.
        assert_eq!(total(&after), (fv(0) + fv(2) + fv(3), fv(1)));
        let sender = winner(1).ticket.sender;
        let row = after.iter().find(|r| r.0 == sender).unwrap();
        assert_eq!((row.1, row.2), (fv(0) + fv(2) + fv(3), fv(1)));
    }
}
