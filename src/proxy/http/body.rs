//! Bodies that stream through portier without buffering: the request body counts what the
//! client uploads; the response body counts what it downloads and, when it ends, finishes
//! the exchange (pooled connection back, metrics, access log).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

use crate::balance::ServerLive;

/// Set once the request body has been sent whole: the response timeout runs from there, so
/// a long upload (or Outlook Anywhere's RPC_IN_DATA, answered only when it ends) is not cut.
#[derive(Default)]
pub struct BodySent {
    /// Bytes of request body seen so far.
    pub seen: AtomicU64,
    done: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl BodySent {
    pub fn mark(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.notify.notify_waiters();
        }
    }
    pub async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            n.await;
        }
    }
}

/// The client's request body on its way to the server.
pub struct RequestBody {
    inner: Incoming,
    counter: Counter,
    sent: Arc<BodySent>,
}

impl RequestBody {
    pub fn new(inner: Incoming, counter: Counter, sent: Arc<BodySent>) -> Self {
        if inner.is_end_stream() {
            sent.mark();
        }
        RequestBody { inner, counter, sent }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.sent.seen.fetch_add(d.len() as u64, Ordering::Relaxed);
                    self.counter.inc_by(d.len() as u64);
                }
                if self.inner.is_end_stream() {
                    self.sent.mark();
                }
            }
            Poll::Ready(None) => self.sent.mark(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What to do once a response has been sent (or abandoned).
pub trait Finish: Send + 'static {
    /// `bytes` sent to the client; `complete` is false when the body was cut short.
    fn finish(self: Box<Self>, bytes: u64, complete: bool);
}

enum Kind {
    Full(Option<Bytes>),
    Stream(Incoming),
}

pub struct ResponseBody {
    kind: Kind,
    /// The server's live state: a body still streaming when its drain time is over ends.
    live: Option<Arc<ServerLive>>,
    sent: u64,
    counter: Option<Counter>,
    finish: Option<Box<dyn Finish>>,
}

impl ResponseBody {
    /// A body portier wrote itself (errors, redirects).
    pub fn full(text: impl Into<Bytes>, finish: Option<Box<dyn Finish>>) -> Self {
        ResponseBody { kind: Kind::Full(Some(text.into())), live: None, sent: 0, counter: None, finish }
    }

    /// A server's body, streamed.
    pub fn stream(inner: Incoming, live: Arc<ServerLive>, counter: Counter, finish: Box<dyn Finish>) -> Self {
        ResponseBody {
            kind: Kind::Stream(inner),
            live: Some(live),
            sent: 0,
            counter: Some(counter),
            finish: Some(finish),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(f) = self.finish.take() {
            f.finish(self.sent, complete);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if this.live.as_ref().is_some_and(|l| l.is_cut()) {
            // The server left the configuration and its drain time is over: the stream ends
            // short (hyper resets the HTTP/2 stream or closes the HTTP/1.1 connection).
            this.end(false);
            return Poll::Ready(None);
        }
        let r = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Stream(inner) => Pin::new(inner).poll_frame(cx),
        };
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                    if let Some(c) = &this.counter {
                        c.inc_by(d.len() as u64);
                    }
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => this.end(false),
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Stream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Stream(inner) => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body dropped before its end: the client went away, or hyper gave up on it.
        let complete = self.is_end_stream();
        self.end(complete);
    }
}
