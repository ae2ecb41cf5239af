//! Wakes a sink's task when its HTTP exchange moves on.
//!
//! The component drives HTTP without blocking and, while a request is out,
//! asks to be polled again within a millisecond: without more, every
//! request body chunk and every answer would wait up to that long to be
//! seen. The host knows better: it runs the exchange. These wrappers ring
//! the sink's [`Wake`] when the server has taken a chunk of the request
//! body (so the guest may write more), when the answer's head arrives and
//! when a chunk of its body does, and the sink task polls at once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use tokio::sync::Notify;

/// One sink's doorbell; cheap to clone.
#[derive(Clone, Default)]
pub struct Wake(Arc<Notify>);

impl Wake {
    pub fn ring(&self) {
        // A permit is kept if the task is not waiting yet: never missed.
        self.0.notify_one();
    }

    /// Resolves at the next ring (or at once for one already rung).
    pub async fn rung(&self) {
        self.0.notified().await
    }
}

/// A body that rings `wake` each time a frame of it is taken.
pub struct Ringing<B> {
    inner: B,
    wake: Wake,
}

impl<B> Ringing<B> {
    pub fn new(inner: B, wake: Wake) -> Self {
        Ringing { inner, wake }
    }
}

impl<B: Body + Unpin> Body for Ringing<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if polled.is_ready() {
            self.wake.ring();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn taking_a_frame_rings() {
        let wake = Wake::default();
        let mut body = Ringing::new(
            Full::new(bytes::Bytes::from_static(b"m v=1\n")),
            wake.clone(),
        );
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), &b"m v=1\n"[..]);
        // The ring was kept for a task not yet waiting.
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.rung())
            .await
            .expect("rung");
    }
}
