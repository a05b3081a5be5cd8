//! go-livepeer's wire rules that more than one adapter needs (the shim
//! and the attach client): what a gateway signs in `SegData`.

pub mod seg_creds;
