//! The media relay's sans-IO parts. `sdp`: the offer/answer bodies a relayed leg is sent,
//! rewritten to the relay's ports; `latch`: which source a stream accepts, and when a silent
//! one ends; `relay`: one stream's datagrams passed between its two legs' sockets. The port
//! pool and the calls' use of these are to come (see the media issue); nothing outside `media`
//! uses it yet.

pub mod latch;
pub mod relay;
pub mod sdp;
