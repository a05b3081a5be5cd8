//! Probabilistic micropayments: tickets, their hash and signatures, the
//! recipient's randomness, validation and the winning-ticket store.

pub mod recipient;
pub mod sender_monitor;
pub mod signature;
pub mod store;
pub mod ticket;
pub mod validation;

pub use ticket::Ticket;
