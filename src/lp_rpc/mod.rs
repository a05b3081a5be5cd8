//! go-livepeer's wire rules that more than one adapter needs (the shim and
//! the attach client): capabilities, what a segment notification asks for,
//! result bodies, and what a gateway signs in `SegData`.

pub mod capabilities;
pub mod results;
pub mod seg_creds;
pub mod segment;
